"""Sentence reordering: the permutation enumeration, and examples decoded back to segments."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ernie_style.corpus.annotate import RawDocument, RegexAnnotator, document_from_sentences
from ernie_style.pretrain.examples import CorpusContext, TokenizedDocument, collate
from ernie_style.pretrain.registry import get_task
from ernie_style.testing.model import tiny_backbone
from ernie_style.tokenizer import train_wordpiece
from pretrain_tasks.sentence_reordering import (
    SentenceReordering,
    class_to_permutation,
    num_permutation_classes,
    permutation_classes,
    permutation_to_class,
)

WORDS = [
    *("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"),
    *("lambda", "mu", "nu", "xi", "omicron", "pi", "rho", "sigma", "tau", "upsilon", "phi"),
    *("chi", "psi", "omega"),
]


@pytest.fixture(scope="module")
def greek():
    """A tokenizer in which every Greek-letter word and '.' is a single token."""
    return train_wordpiece([" ".join(WORDS) + " ."] * 3, vocab_size=300, min_frequency=1)


def _examples(tokenizer, doc, seed=0, max_seq_len=64, **config):
    task = SentenceReordering(tokenizer, max_seq_len=max_seq_len, config=config)
    tdoc = TokenizedDocument(doc, tokenizer)
    return tdoc, task.examples(tdoc, np.random.default_rng(seed), CorpusContext([doc], tokenizer))


def _shown_segments(example, sep_id):
    """Split an example back into its shown segments, checking the layout on the way."""
    ids, types = example.input_ids, example.token_type_ids
    shown, current = [], []
    for token, segment_type in zip(ids[1:], types[1:], strict=True):
        assert segment_type == len(shown)
        if token == sep_id:
            shown.append(current)
            current = []
        else:
            current.append(token)
    assert current == [] and types[0] == 0
    return shown


def _concat(lists):
    return list(itertools.chain.from_iterable(lists))


def test_enumeration():
    assert [num_permutation_classes(m) for m in (1, 2, 3, 4)] == [1, 3, 9, 33]
    assert permutation_classes(3)[:4] == ((0,), (0, 1), (1, 0), (0, 1, 2))
    assert permutation_to_class((0,), 3) == 0
    assert permutation_to_class((1, 0), 3) == 2
    assert permutation_to_class((0, 1, 2), 3) == 3
    assert permutation_to_class((1, 2, 0), 3) == 6
    assert permutation_to_class((2, 1, 0), 3) == 8
    assert permutation_to_class((0, 1, 2, 3), 4) == 9
    assert permutation_to_class((3, 2, 1, 0), 4) == 32
    assert class_to_permutation(6, 3) == (1, 2, 0)
    for max_segments in (1, 2, 3, 4):
        n = num_permutation_classes(max_segments)
        for index in range(n):
            perm = class_to_permutation(index, max_segments)
            assert permutation_to_class(perm, max_segments) == index
            assert permutation_to_class(list(perm), 4) == index  # same prefix for every M
        expected = [p for m in range(1, max_segments + 1) for p in itertools.permutations(range(m))]
        assert list(permutation_classes(max_segments)) == expected
    for bad in [(), (1,), (0, 0), (0, 2), (0, 1, 2, 3)]:
        with pytest.raises(ValueError):
            permutation_to_class(bad, 3)
    for bad_index in (-1, 9):
        with pytest.raises(ValueError):
            class_to_permutation(bad_index, 3)


def test_task_attributes_and_config(greek):
    assert get_task("sentence_reordering") is SentenceReordering
    assert SentenceReordering.task_id == 3 and SentenceReordering.level == "sequence"
    assert SentenceReordering(greek).num_labels == 9
    assert SentenceReordering(greek, config={"max_segments": 4}).num_labels == 33
    for bad in (0, 5):
        with pytest.raises(ValueError, match="max_segments"):
            SentenceReordering(greek, config={"max_segments": bad})
    with pytest.raises(TypeError):
        SentenceReordering(greek, config={"max_segments": 2.5})
    with pytest.raises(ValueError, match="max_seq_len"):
        SentenceReordering(greek, max_seq_len=8, config={"max_segments": 4})
    SentenceReordering(greek, max_seq_len=9, config={"max_segments": 4})


def _paragraph_doc():
    # Paragraph 0: five sentences of 2-4 distinct words; paragraph 1: one 2-word sentence.
    lengths = [3, 2, 4, 2, 3]
    sentences, w = [], 0
    for n in lengths:
        sentences.append(" ".join(WORDS[w : w + n]) + ".")
        w += n
    return document_from_sentences("d", [sentences, ["psi omega"]]), lengths


@pytest.mark.parametrize(("max_segments", "min_segments"), [(3, 1), (4, 1), (3, 2), (4, 2)])
def test_shown_segments_are_the_original_ones_in_the_labelled_order(
    greek, max_segments, min_segments
):
    doc, lengths = _paragraph_doc()
    sentence_ends = set(np.cumsum([n + 1 for n in lengths]).tolist())
    labels = Counter()
    config = {"max_segments": max_segments, "min_segments": min_segments}
    for seed in range(1000):
        tdoc, examples = _examples(greek, doc, seed, **config)
        assert len(examples) == 2  # one per paragraph
        for example, (start, end) in zip(examples, [(0, 19), (19, 21)], strict=True):
            labels[example.labels] += 1
            shown = _shown_segments(example, greek.sep_token_id)
            perm = class_to_permutation(example.labels, max_segments)
            assert len(perm) == len(shown) and all(shown)
            original = [None] * len(perm)
            for k, index in enumerate(perm):
                original[index] = shown[k]  # perm[k] = original index of the k-th shown
            assert _concat(original) == tdoc.tokens(start, end).tolist()
            cuts = np.cumsum([len(s) for s in original])  # every cut at a sentence boundary
            assert set(cuts.tolist()) <= sentence_ends | {2}
    per_m = Counter(len(class_to_permutation(c, max_segments)) for c in labels.elements())
    if min_segments == 1:  # ERNIE's draw: m uniform over 1..M for the five-sentence paragraph
        assert set(labels) == set(range(num_permutation_classes(max_segments)))
        assert abs(per_m[1] - 1000 - 1000 / max_segments) < 100
    else:  # m uniform over 2..M: only the one-sentence paragraph is one segment (class 0)
        assert set(labels) == set(range(num_permutation_classes(max_segments)))
        assert per_m[1] == 1000
        assert all(
            abs(per_m[m] - 1000 / (max_segments - 1)) < 100
            for m in range(2, 5)
            if m <= max_segments
        )


def test_a_sentence_is_never_cut(greek):
    # Cutting inside a sentence left one segment ending in "." (the original last one) and the
    # others without, which gave the order away; a one-sentence paragraph stays one segment.
    doc = document_from_sentences("d", [["alpha beta gamma delta epsilon zeta."]])
    for seed in range(50):
        tdoc, (example,) = _examples(greek, doc, seed)
        assert example.labels == 0
        assert _shown_segments(example, greek.sep_token_id) == [tdoc.token_ids.tolist()]


def _surface_features(example, sep_id, dot_id):
    """What a model could read without understanding: segment count, which segments end in
    '.', and the rank order of the segment lengths."""
    shown = _shown_segments(example, sep_id)
    lengths = [len(s) for s in shown]
    return (
        len(shown),
        tuple(s[-1] == dot_id for s in shown),
        tuple(np.argsort(lengths, kind="stable").tolist()),
    )


def test_surface_features_predict_no_better_than_the_segment_count(wiki_documents, wiki_tokenizer):
    # A lookup-table classifier on surface features, fitted on one half of the examples and
    # scored on the other, does no better than predicting the majority class of each segment
    # count (the count is visible by design: it is the m of the permutation).
    docs, tokenizer = wiki_documents[:40], wiki_tokenizer
    task = SentenceReordering(tokenizer, max_seq_len=128)
    corpus = CorpusContext(docs, tokenizer)
    examples = []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        examples += [
            e for i in range(len(docs)) for e in task.examples(corpus.tokenized(i), rng, corpus)
        ]
    dot = tokenizer.convert_tokens_to_ids(".")
    features = [_surface_features(e, tokenizer.sep_token_id, dot) for e in examples]
    labels = [e.labels for e in examples]
    half = len(examples) // 2

    def fitted_accuracy(key):
        table = {}
        for f, y in zip(features[:half], labels[:half], strict=True):
            table.setdefault(key(f), Counter())[y] += 1
        majority = Counter(labels[:half]).most_common(1)[0][0]
        hits = [
            (table[key(f)].most_common(1)[0][0] if key(f) in table else majority) == y
            for f, y in zip(features[half:], labels[half:], strict=True)
        ]
        return sum(hits) / len(hits)

    by_count = fitted_accuracy(lambda f: f[0])
    by_surface = fitted_accuracy(lambda f: f)
    assert len(examples) > 1000 and by_count < 0.9  # not a degenerate corpus
    assert by_surface <= by_count + 0.03, (by_surface, by_count)


def test_long_paragraphs_use_a_window_of_sentences(greek):
    # 6 sentences of 5 tokens; a 20-token budget (24 - [CLS] - 3 [SEP]) holds 4 sentences.
    sentences = [" ".join(WORDS[4 * s : 4 * s + 4]) + "." for s in range(6)]
    doc = document_from_sentences("d", [sentences])
    tokens = TokenizedDocument(doc, greek).token_ids.tolist()
    windows = set()
    for seed in range(40):
        _, (example,) = _examples(greek, doc, seed, max_seq_len=24)
        assert len(example) <= 24
        shown = _shown_segments(example, greek.sep_token_id)
        perm = class_to_permutation(example.labels, 3)
        text = _concat(shown[perm.index(i)] for i in range(len(perm)))
        assert len(text) == 20
        first = tokens.index(text[0])
        assert first % 5 == 0 and tokens[first : first + 20] == text  # whole sentences
        windows.add(first)
    assert windows == {0, 5, 10}


def test_a_sentence_longer_than_the_budget_keeps_a_token_in_every_segment(greek):
    # Paragraph 0 starts with a sentence without any token (a control character), then a
    # sentence longer than the whole budget, then three short ones.
    long_sentence = " ".join(WORDS[:12]) + "."
    short = ["psi.", "omega.", "chi."]
    doc = document_from_sentences("d", [["\x00", long_sentence, *short], ["alpha"], ["\x00 \x01"]])
    n_segments = Counter()
    for seed in range(80):
        tdoc, examples = _examples(greek, doc, seed, max_seq_len=11, max_segments=4)
        assert len(examples) == 2  # the control-character paragraph has no token
        example = examples[0]
        assert len(example) <= 11
        shown = _shown_segments(example, greek.sep_token_id)
        perm = class_to_permutation(example.labels, 4)
        assert all(len(s) >= 1 for s in shown) and len(shown) == len(perm)
        n_segments[len(shown)] += 1
        # Each shown segment is the start of its original segment (cut from the end).
        original = [shown[perm.index(i)] for i in range(len(perm))]
        position = 0
        words = tdoc.token_ids.tolist()
        for segment in original:
            found = words.index(segment[0], position)
            assert words[found : found + len(segment)] == segment
            position = found + len(segment)
        assert examples[1].labels == 0 and len(examples[1]) == 3
    # The long sentence alone (cut to fit) is one segment; the three short ones give 1..3.
    assert set(n_segments) == {1, 2, 3}


def test_head_and_loss_on_a_tiny_ernie(tokenizer, english_documents):
    backbone = tiny_backbone(len(tokenizer))
    task = SentenceReordering(tokenizer, max_seq_len=48)
    corpus = CorpusContext(english_documents, tokenizer)
    rng = np.random.default_rng(0)
    examples = [
        e for i in range(len(corpus)) for e in task.examples(corpus.tokenized(i), rng, corpus)
    ]
    assert len(examples) == 10
    batch = collate(examples, tokenizer.pad_token_id)
    head = task.build_head(backbone)
    out = backbone(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        token_type_ids=batch["token_type_ids"],
        task_type_ids=batch["task_type_ids"],
    )
    logits, targets = head(out.last_hidden_state, out.pooler_output, batch["labels"])
    assert logits.shape == (10, 9) and targets.shape == (10,)
    loss = task.loss(logits, targets)
    assert torch.isfinite(loss)
    loss.backward()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=st.text(max_size=300) | st.text(alphabet="ab Cd.\n", max_size=300),
    max_len=st.sampled_from([8, 9, 16, 64]),
    max_segments=st.integers(1, 4),
)
def test_property_any_document(tokenizer, text, max_len, max_segments):
    if 2 * max_segments + 1 > max_len:
        max_segments = 3
    doc = RegexAnnotator().annotate_one(RawDocument(id="h", title="", text=text))
    tdoc, examples = _examples(tokenizer, doc, 5, max_len, max_segments=max_segments)
    assert examples == _examples(tokenizer, doc, 5, max_len, max_segments=max_segments)[1]
    paragraphs = [p for p in doc.paragraphs() if any(len(tdoc.sentence_tokens(s)) for s in p)]
    assert len(examples) == len(paragraphs)
    tokens = tdoc.token_ids.tolist()
    for example, paragraph in zip(examples, paragraphs, strict=True):
        assert 3 <= len(example) <= max_len
        assert example.input_ids[0] == tokenizer.cls_token_id
        assert example.input_ids[-1] == tokenizer.sep_token_id
        assert 0 <= example.labels < num_permutation_classes(max_segments)
        shown = _shown_segments(example, tokenizer.sep_token_id)
        perm = class_to_permutation(example.labels, max_segments)
        assert len(shown) == len(perm) and all(shown)
        # Un-permuted, the segments are consecutive pieces of the paragraph (each maybe cut).
        a = tdoc.word_offsets[tdoc.doc.sentence_word_range(paragraph[0])[0]]
        b = tdoc.word_offsets[tdoc.doc.sentence_word_range(paragraph[-1])[1]]
        position = a
        for segment in (shown[perm.index(i)] for i in range(len(perm))):
            found = next(i for i in range(position, b) if tokens[i : i + len(segment)] == segment)
            position = found + len(segment)
