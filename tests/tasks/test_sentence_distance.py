"""Sentence distance: exact labels on hand-built documents, balance, and properties."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ernie_style.corpus.annotate import RawDocument, RegexAnnotator, document_from_sentences
from ernie_style.pretrain.examples import CorpusContext, collate
from ernie_style.testing.model import tiny_backbone
from pretrain_tasks.sentence_distance import SentenceDistance

MAIN = [
    "Albert was born in Ulm.",
    "He developed the theory of relativity.",
    "Marie studied radioactivity in Paris.",
    "She won the Nobel prize twice.",
]
OTHER = ["The river flows through the old valley.", "Farmers grow wheat and barley."]


def segments(example) -> tuple[list[int], list[int]]:
    """The two segments of `[CLS] a [SEP] b [SEP]` (special tokens stripped)."""
    types = example.token_type_ids
    first = [t for t, k in zip(example.input_ids, types, strict=True) if k == 0]
    second = [t for t, k in zip(example.input_ids, types, strict=True) if k == 1]
    return first[1:-1], second[:-1]


def check_pair_invariants(example, tokenizer, max_seq_len: int, num_labels: int) -> None:
    ids, types = example.input_ids, example.token_type_ids
    assert len(ids) == len(types) <= max_seq_len
    assert 0 <= example.labels < num_labels
    assert ids[0] == tokenizer.cls_token_id
    assert sorted(set(types)) == [0, 1] and types == sorted(types)
    ends = [k for k in range(len(ids)) if k + 1 == len(ids) or types[k + 1] != types[k]]
    assert [ids[k] for k in ends] == [tokenizer.sep_token_id] * 2
    assert ids.count(tokenizer.sep_token_id) == 2


@pytest.fixture()
def corpus(tokenizer):
    docs = [
        document_from_sentences("main", [MAIN[:2], MAIN[2:]]),
        document_from_sentences("other", [OTHER]),
    ]
    return CorpusContext(docs, tokenizer)


def sentence_lookup(corpus) -> dict[tuple[int, ...], tuple[str, int]]:
    table = {}
    for d, doc in enumerate(corpus.documents):
        tokenized = corpus.tokenized(d)
        for i in range(doc.num_sentences):
            table[tuple(tokenized.sentence_tokens(i).tolist())] = (doc.id, i)
    return table


def test_labels_match_the_paired_sentences(tokenizer, corpus):
    task = SentenceDistance(tokenizer, max_seq_len=128)
    lookup = sentence_lookup(corpus)
    assert len(lookup) == 6  # every sentence tokenizes differently
    seen = Counter()
    for seed in range(60):
        examples = task.examples(corpus.tokenized(0), np.random.default_rng(seed), corpus)
        assert len(examples) == 2  # one example per two sentences
        for ex in examples:
            check_pair_invariants(ex, tokenizer, 128, 3)
            first, second = segments(ex)
            doc1, i = lookup[tuple(first)]
            doc2, j = lookup[tuple(second)]
            assert doc1 == "main"
            if ex.labels == 0:
                assert (doc2, j) == ("main", i + 1)
            elif ex.labels == 1:
                assert doc2 == "main" and j >= i + 2
            else:
                assert doc2 == "other"
            seen[(ex.labels, i, j)] += 1
    # adjacency crosses the paragraph break (sentence 1 -> 2), all distant pairs occur
    assert {key for key in seen if key[0] == 0} == {(0, 0, 1), (0, 1, 2), (0, 2, 3)}
    assert {key for key in seen if key[0] == 1} == {(1, 0, 2), (1, 0, 3), (1, 1, 3)}


def test_class_balance(tokenizer, corpus):
    task = SentenceDistance(tokenizer, max_seq_len=64)
    rng = np.random.default_rng(7)
    labels = Counter()
    for _ in range(300):
        labels.update(ex.labels for ex in task.examples(corpus.tokenized(0), rng, corpus))
    total = sum(labels.values())
    assert total == 600
    for label in range(3):
        assert abs(labels[label] / total - 1 / 3) < 0.06, labels


def test_short_documents_and_lonely_corpus_give_nothing(tokenizer):
    two = document_from_sentences("two", [["One sentence here.", "Another one."]])
    four = document_from_sentences("four", [MAIN])
    corpus = CorpusContext([two, four], tokenizer)
    task = SentenceDistance(tokenizer)
    assert task.examples(corpus.tokenized(0), np.random.default_rng(0), corpus) == []
    assert task.examples(corpus.tokenized(1), np.random.default_rng(0), corpus)
    alone = CorpusContext([four], tokenizer)
    for seed in range(10):
        assert task.examples(alone.tokenized(0), np.random.default_rng(seed), alone) == []


def test_deterministic_and_truncated(tokenizer, corpus):
    task = SentenceDistance(tokenizer, max_seq_len=8)
    runs = [task.examples(corpus.tokenized(0), np.random.default_rng(3), corpus) for _ in range(2)]
    assert runs[0] == runs[1]
    for ex in runs[0]:
        check_pair_invariants(ex, tokenizer, 8, 3)
        assert len(ex) == 8


def test_example_count_follows_sentence_count(tokenizer):
    sentences = [f"Sentence number {w} is here." for w in "abcdefghi"]
    docs = [document_from_sentences("long", [sentences]), document_from_sentences("other", [OTHER])]
    corpus = CorpusContext(docs, tokenizer)
    examples = SentenceDistance(tokenizer).examples(
        corpus.tokenized(0), np.random.default_rng(0), corpus
    )
    assert len(examples) == 4


SENTENCE = st.one_of(
    st.sampled_from(["Alpha beta.", "Gamma 12?", "Über straße!", "\x00.", "The river flows."]),
    st.text(max_size=15),
)
SEPARATOR = st.sampled_from([" ", "\n", "\n\n", " \n \n "])
TEXT = st.one_of(
    st.text(max_size=120),
    st.lists(st.tuples(SENTENCE, SEPARATOR), max_size=8).map(
        lambda parts: "".join(a + b for a, b in parts)
    ),
)


@settings(max_examples=40, deadline=None)
@given(
    texts=st.lists(st.tuples(st.text(max_size=10), TEXT), min_size=1, max_size=4),
    max_seq_len=st.integers(8, 40),
    seed=st.integers(0, 2**16),
)
def test_property_arbitrary_documents(tokenizer, texts, max_seq_len, seed):
    annotator = RegexAnnotator()
    docs = [annotator.annotate_one(RawDocument(f"d{i}", t, x)) for i, (t, x) in enumerate(texts)]
    corpus = CorpusContext(docs, tokenizer)
    task = SentenceDistance(tokenizer, max_seq_len=max_seq_len)
    for d in range(len(docs)):
        examples = task.examples(corpus.tokenized(d), np.random.default_rng(seed), corpus)
        assert len(examples) <= docs[d].num_sentences // 2
        again = task.examples(corpus.tokenized(d), np.random.default_rng(seed), corpus)
        assert examples == again
        for ex in examples:
            assert ex.task == "sentence_distance" and ex.task_id == 4
            check_pair_invariants(ex, tokenizer, max_seq_len, 3)


def test_head_and_loss_run(tokenizer, corpus):
    backbone = tiny_backbone(len(tokenizer))
    task = SentenceDistance(tokenizer, max_seq_len=32)
    examples = task.examples(corpus.tokenized(0), np.random.default_rng(0), corpus)
    batch = collate(examples, tokenizer.pad_token_id)
    out = backbone(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        token_type_ids=batch["token_type_ids"],
        task_type_ids=batch["task_type_ids"],
    )
    head = task.build_head(backbone)
    logits, targets = head(out.last_hidden_state, out.pooler_output, batch["labels"])
    assert logits.shape == (len(examples), 3)
    loss = task.loss(logits, targets)
    assert torch.isfinite(loss)
    loss.backward()
    assert 0.0 <= task.metrics(logits, targets)["accuracy"] <= 1.0


def test_a_document_never_gives_the_same_pair_twice_in_a_pass(wiki_documents, wiki_tokenizer):
    # On 40 Wikipedia articles the old sampler repeated 303 of 12,243 pairs (2.5%).
    docs, tokenizer = wiki_documents[:40], wiki_tokenizer
    task = SentenceDistance(tokenizer, max_seq_len=128)
    corpus = CorpusContext(docs, tokenizer)
    total, repeats = 0, 0
    for seed in range(3):
        rng = np.random.default_rng(seed)
        for d in range(len(docs)):
            examples = task.examples(corpus.tokenized(d), rng, corpus)
            pairs = [(tuple(e.input_ids), e.labels) for e in examples]
            total += len(pairs)
            repeats += len(pairs) - len(set(pairs))
    assert total > 1000 and repeats == 0
