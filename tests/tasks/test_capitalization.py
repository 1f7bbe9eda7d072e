"""Capitalization: exact labels on a hand-built document, no label without a cased letter, and
no case in the input, also on a cased vocabulary (the label would be in the input)."""

from __future__ import annotations

import numpy as np
import pytest

from ernie_style.corpus.annotate import document_from_sentences
from ernie_style.pretrain.examples import IGNORE_INDEX, CorpusContext, TokenizedDocument
from ernie_style.tokenizer import train_wordpiece
from pretrain_tasks.capitalization import Capitalization, capitalization_label, keeps_case

I = IGNORE_INDEX  # noqa: E741
WORDS = "paris is in france . the eu has 27 members , iphone sells well ( 3d ) !"


@pytest.fixture(scope="module")
def uncased():
    """A lower-casing tokenizer in which every word above is one token."""
    return train_wordpiece([WORDS] * 5, vocab_size=200, min_frequency=1)


def test_label_is_the_case_of_the_first_cased_letter():
    assert [capitalization_label(w) for w in ["Paris", "paris", "EU", "iPhone", "(Paris"]] == [
        1,
        0,
        1,
        0,
        1,
    ]
    # No cased letter: no label (a model cannot tell "27" or "," apart by case).
    assert [capitalization_label(w) for w in ["27", ",", "...", "东京", ""]] == [I] * 5
    assert capitalization_label("3D") == 1


def test_exact_labels_on_a_document(uncased):
    doc = document_from_sentences(
        "d", [["Paris is in France.", "The EU has 27 members, iPhone sells well (3D)!"]]
    )
    task = Capitalization(uncased, max_seq_len=64)
    tdoc = TokenizedDocument(doc, uncased)
    examples = task.examples(tdoc, np.random.default_rng(0), CorpusContext([doc], uncased))
    assert len(examples) == 1
    (example,) = examples
    tokens = uncased.convert_ids_to_tokens(example.input_ids)
    expected = "[CLS] paris is in france . the eu has 27 members , iphone sells well ( 3d ) !"
    assert tokens == [*expected.split(), "[SEP]"]
    # The input is lower case; the labels are the original case of each word's first letter.
    assert example.labels == [I, 1, 0, 0, 1, I, 1, 1, 0, I, 0, I, 0, 0, 0, I, 1, I, I, I]
    assert example.task == "capitalization" and example.task_id == 1


def test_a_cased_vocabulary_sees_lower_cased_words_with_the_same_labels(uncased):
    # RoBERTa-style vocabularies keep case: the task lower-cases the words itself, so the input
    # holds no case and the labels are those of the uncased vocabulary.
    cased = train_wordpiece(
        [WORDS, WORDS.title()] * 5, vocab_size=200, lowercase=False, min_frequency=1
    )
    assert keeps_case(cased) and not keeps_case(uncased)
    doc = document_from_sentences(
        "d", [["Paris is in France.", "The EU has 27 members, iPhone sells well (3D)!"]]
    )
    examples = {}
    for name, tokenizer in (("cased", cased), ("uncased", uncased)):
        task = Capitalization(tokenizer, max_seq_len=64)
        context = CorpusContext([doc], tokenizer)
        tdoc = TokenizedDocument(doc, tokenizer)
        (examples[name],) = task.examples(tdoc, np.random.default_rng(0), context)
    tokens = cased.convert_ids_to_tokens(examples["cased"].input_ids)
    assert tokens == ["[CLS]", *WORDS.split(), "[SEP]"]  # every word lower case
    assert examples["cased"].labels == examples["uncased"].labels
    assert examples["cased"].token_type_ids == examples["uncased"].token_type_ids
