"""Token-document relation: exact labels on hand-built documents, segmentation rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ernie_style.corpus.annotate import RawDocument, RegexAnnotator, document_from_sentences
from ernie_style.pretrain.examples import IGNORE_INDEX, CorpusContext, TokenizedDocument, collate
from ernie_style.pretrain.registry import get_task
from ernie_style.testing.model import tiny_backbone
from ernie_style.tokenizer import train_wordpiece
from pretrain_tasks.token_document_relation import (
    TokenDocumentRelation,
    document_segments,
    is_punctuation,
)

I = IGNORE_INDEX  # noqa: E741


@pytest.fixture(scope="module")
def greek():
    """A tokenizer in which these Greek-letter words and punctuation are single tokens."""
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa . , ! ? ;"
    words += " qabcdefghijklmnopqrstuvwxyz"  # every letter also as a ## continuation piece
    return train_wordpiece([words] * 3, vocab_size=200, min_frequency=1)


#: The labelling rule and the balancing mechanics are tested with every word labelled and one
#: band; leaving out frequent words and balancing by frequency have tests of their own.
PLAIN = {"frequent_words": 0, "balance_by_frequency": False}


def _examples(tokenizer, doc, max_seq_len=64, seed=0, balance=False):
    """The labelling rule itself is tested unbalanced; balancing has tests of its own."""
    config = {"balance": balance, **PLAIN}
    task = TokenDocumentRelation(tokenizer, max_seq_len=max_seq_len, config=config)
    tdoc = TokenizedDocument(doc, tokenizer)
    corpus = CorpusContext([doc], tokenizer)
    return tdoc, task.examples(tdoc, np.random.default_rng(seed), corpus)


def test_exact_labels_on_a_two_segment_document(greek):
    doc = document_from_sentences("d", [["Alpha beta, gamma! Beta?"], ["Delta ALPHA; delta beta."]])
    tdoc, examples = _examples(greek, doc)
    assert greek.unk_token_id not in tdoc.token_ids
    # The document fits one window: its two sentences become the two segments.
    assert document_segments(tdoc, 62) == [(0, 7), (7, 13)]
    assert len(examples) == 2
    first, second = examples
    assert greek.convert_ids_to_tokens(first.input_ids) == (
        ["[CLS]", "alpha", "beta", ",", "gamma", "!", "beta", "?", "[SEP]"]
    )
    # alpha and beta recur in segment 2; gamma does not; the second "beta" of segment 1 counts.
    assert first.labels == [I, 1, 1, I, 0, I, 1, I, I]
    assert greek.convert_ids_to_tokens(second.input_ids) == (
        ["[CLS]", "delta", "alpha", ";", "delta", "beta", ".", "[SEP]"]
    )
    # delta twice in the same segment is not "another segment".
    assert second.labels == [I, 0, 1, I, 0, 1, I, I]
    assert all(e.token_type_ids == [0] * len(e.input_ids) for e in examples)
    assert all(e.task == "token_document_relation" and e.task_id == 2 for e in examples)


def test_one_window_is_cut_in_two_halves_of_sentences(greek):
    doc = document_from_sentences("d", [["alpha beta.", "gamma alpha."], ["beta delta."]])
    tdoc, examples = _examples(greek, doc)
    assert document_segments(tdoc, 62) == [(0, 6), (6, 9)]  # the first half gets the odd one
    assert [e.labels for e in examples] == [[I, 0, 1, I, 0, 0, I, I], [I, 1, 0, I, I]]


def test_windows_are_the_segments_and_casefolding(greek):
    doc = document_from_sentences(
        "d",
        [
            ["alpha beta gamma delta.", "Epsilon ZETA eta theta."],
            ["iota Kappa ALPHA STRASSE.", "Straße!"],
        ],
    )
    tdoc, examples = _examples(greek, doc, max_seq_len=8)  # 6 tokens a window: one sentence
    assert document_segments(tdoc, 6) == [(0, 5), (5, 10), (10, 15), (15, 17)]
    assert tdoc.word_token_count(13) >= 3  # "strasse" is cut after its third sub-token
    assert [e.labels[1:-1] for e in examples] == [
        [1, 0, 0, 0, I],
        [0, 0, 0, 0, I],
        [0, 0, 1, 1, I, I],  # "STRASSE" and "Straße" casefold alike (lower() would differ)
        [1, I],
    ]
    assert all(len(e) <= 8 for e in examples)


def test_first_sub_token_carries_the_label(greek):
    doc = document_from_sentences("d", [["Alphabeta gamma.", "gamma alphabeta alpha."]])
    tdoc, (first, second) = _examples(greek, doc)
    n = tdoc.word_token_count(0)
    assert n > 1
    assert first.labels == [I, 1] + [I] * (n - 1) + [1, I, I]
    assert second.labels == [I, 1, 1] + [I] * (n - 1) + [0, I, I]


def test_short_documents(greek):
    assert _examples(greek, document_from_sentences("d", [["alpha beta alpha."]]))[1] == []
    assert _examples(greek, document_from_sentences("d", []))[1] == []
    # Two sentences, one of pure punctuation: that segment has no label, so no example.
    _, examples = _examples(greek, document_from_sentences("d", [["alpha beta.", "!?"]]))
    assert len(examples) == 1 and examples[0].labels == [I, 0, 0, I, I]


def test_task_attributes_and_punctuation(greek):
    assert get_task("token_document_relation") is TokenDocumentRelation
    task = TokenDocumentRelation(greek)
    assert task.num_labels == 2 and task.level == "token"
    assert is_punctuation("...") and is_punctuation("—") and is_punctuation("€")
    assert not is_punctuation("a.") and not is_punctuation("٣") and not is_punctuation("x")
    with pytest.raises(ValueError):
        TokenDocumentRelation(greek, config={"threshold": 1})
    assert TokenDocumentRelation(greek).config.balance is True  # the default
    with pytest.raises(TypeError, match="balance must be a bool"):
        TokenDocumentRelation(greek, config={"balance": "yes"})


def test_balance_keeps_the_rarer_class_and_as_many_of_the_other(greek):
    doc = document_from_sentences(
        "d",
        [["alpha beta gamma delta epsilon.", "zeta eta theta alpha beta."]],
        # segment 1: alpha beta recur (2 x 1), gamma delta epsilon do not (3 x 0)
    )
    _, plain = _examples(greek, doc)
    picks = set()
    for seed in range(40):
        _, balanced = _examples(greek, doc, seed=seed, balance=True)
        assert len(balanced) == len(plain) == 2
        for b, p in zip(balanced, plain, strict=True):
            kept = [(k, label) for k, label in enumerate(b.labels) if label != I]
            assert all(p.labels[k] == label for k, label in kept)  # a subset of the true labels
            ones = sum(label for _, label in kept)
            assert ones == len(kept) - ones == min(p.labels.count(0), p.labels.count(1))
        picks.add(tuple(balanced[0].labels))
        assert balanced == _examples(greek, doc, seed=seed, balance=True)[1]  # seeded
    assert len(picks) == 3  # which 2 of the 3 zeros of segment 1 are kept varies with the seed


def test_balance_turns_an_80_percent_majority_into_50(tokenizer, wiki_documents):
    docs = wiki_documents[:10]
    corpus = CorpusContext(docs, tokenizer)
    rates = {}
    for balance in (False, True):
        config = {"balance": balance, **PLAIN}
        task = TokenDocumentRelation(tokenizer, max_seq_len=128, config=config)
        rng = np.random.default_rng(0)
        labels = [
            label
            for i in range(len(docs))
            for e in task.examples(corpus.tokenized(i), rng, corpus)
            for label in e.labels
            if label != I
        ]
        rates[balance] = sum(labels) / len(labels)
    assert rates[False] > 0.7  # always answering "occurs elsewhere" would score this
    assert rates[True] == 0.5


def test_head_and_loss_on_a_tiny_ernie(tokenizer, english_documents):
    backbone = tiny_backbone(len(tokenizer))
    task = TokenDocumentRelation(tokenizer, max_seq_len=32, config=PLAIN)
    corpus = CorpusContext(english_documents, tokenizer)
    examples = task.examples(corpus.tokenized(1), np.random.default_rng(0), corpus)
    batch = collate(examples, tokenizer.pad_token_id)
    assert {0, 1} <= set(batch["labels"].unique().tolist())
    head = task.build_head(backbone)
    out = backbone(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        token_type_ids=batch["token_type_ids"],
        task_type_ids=batch["task_type_ids"],
    )
    logits, targets = head(out.last_hidden_state, out.pooler_output, batch["labels"])
    assert logits.shape == (int((batch["labels"] != IGNORE_INDEX).sum()), 2)
    loss = task.loss(logits, targets)
    assert torch.isfinite(loss)
    loss.backward()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=st.text(max_size=300) | st.text(alphabet="ab Ab.!\n", max_size=200),
    max_len=st.sampled_from([8, 13, 64]),
)
def test_property_any_document(tokenizer, text, max_len):
    doc = RegexAnnotator().annotate_one(RawDocument(id="h", title="", text=text))
    balanced = _examples(tokenizer, doc, max_seq_len=max_len, seed=1, balance=True)[1]
    tdoc, examples = _examples(tokenizer, doc, max_seq_len=max_len, seed=1)
    plain = iter(examples)
    for e in balanced:  # each balanced example is one of the plain ones, half 1s, half 0s
        p = next(x for x in plain if x.input_ids == e.input_ids)
        kept = [label for label in e.labels if label != I]
        assert kept and 2 * sum(kept) == len(kept)
        assert all(label in (I, p.labels[k]) for k, label in enumerate(e.labels))
    assert examples == _examples(tokenizer, doc, max_seq_len=max_len, seed=2)[1]
    segments = document_segments(tdoc, max_len - 2)
    if doc.num_sentences < 2:
        assert examples == [] and segments == []
    # Segments tile the document's words in order.
    assert [a for a, _ in segments[1:]] == [b for _, b in segments[:-1]]
    words = doc.words()
    folded = [{w.casefold() for w in words[a:b]} for a, b in segments]
    expected = []
    for k, (a, b) in enumerate(segments):
        others = set().union(*(f for j, f in enumerate(folded) if j != k))
        word_labels = [I if is_punctuation(w) else int(w.casefold() in others) for w in words[a:b]]
        token_labels = tdoc.word_labels_to_tokens(a, b, word_labels)[: max_len - 2].tolist()
        if any(label != I for label in token_labels):
            expected.append([I, *token_labels, I])
    assert [e.labels for e in examples] == expected
    for e in examples:
        assert len(e) <= max_len and len(e.labels) == len(e)
        assert (
            e.input_ids[0] == tokenizer.cls_token_id and e.input_ids[-1] == tokenizer.sep_token_id
        )
        assert set(e.labels) <= {0, 1, I}
