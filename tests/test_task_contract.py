"""One contract test parameterised over every registered task, on real sample documents
(Wikipedia articles from the shipped sample corpus, annotated with spaCy)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ernie_style.corpus.annotate import RawDocument, RegexAnnotator
from ernie_style.pretrain.examples import IGNORE_INDEX, MAX_SEGMENTS, CorpusContext, collate
from ernie_style.pretrain.model import ErniePretrainingModel, build_backbone_config
from ernie_style.pretrain.registry import registered_tasks
from ernie_style.tokenizer import train_wordpiece

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample_corpus" / "wiki_sample.jsonl"
MAX_SEQ_LEN = 64
TASK_NAMES = list(registered_tasks())


def _sample_raw_documents(n_docs: int = 6, n_paragraphs: int = 8) -> list[RawDocument]:
    raws = []
    with SAMPLE.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            text = "\n\n".join(row["text"].split("\n\n")[:n_paragraphs])
            raws.append(RawDocument(id=str(row["id"]), title=row["title"], text=text))
            if len(raws) == n_docs:
                break
    return raws


@pytest.fixture(scope="module")
def sample_documents():
    """Real Wikipedia documents annotated with the default spaCy annotator."""
    from ernie_style.corpus.spacy_annotator import SpacyAnnotator

    docs = SpacyAnnotator().annotate(_sample_raw_documents())
    for doc in docs:
        doc.validate()
    assert any(doc.entity_starts for doc in docs) and any(doc.phrase_starts for doc in docs)
    return docs


@pytest.fixture(scope="module")
def sample_tokenizer(sample_documents):
    return train_wordpiece([d.text for d in sample_documents], vocab_size=1500)


@pytest.fixture(scope="module")
def corpus(sample_documents, sample_tokenizer):
    return CorpusContext(sample_documents, sample_tokenizer)


def _all_examples(task, corpus, seed):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(len(corpus)):
        out.extend(task.examples(corpus.tokenized(i), rng, corpus))
    out.extend(task.corpus_examples(rng, corpus))
    return out


def _check_layout(example, task_cls, task, tokenizer, max_len=MAX_SEQ_LEN):
    ids, types = example.input_ids, example.token_type_ids
    assert example.task == task_cls.name and example.task_id == task_cls.task_id
    assert 3 <= len(ids) <= max_len and len(types) == len(ids)
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert min(types) >= 0 and max(types) < MAX_SEGMENTS
    # Every change of segment id happens right after a [SEP], and ids never go back.
    for k in range(1, len(types)):
        assert types[k] >= types[k - 1]
        if types[k] != types[k - 1]:
            assert ids[k - 1] == tokenizer.sep_token_id
    assert tokenizer.pad_token_id not in ids
    if task_cls.level == "token":
        labels = np.asarray(example.labels)
        assert labels.shape == (len(ids),)
        specials = np.isin(ids, [tokenizer.cls_token_id, tokenizer.sep_token_id])
        assert (labels[specials] == IGNORE_INDEX).all()
        scored = labels[labels != IGNORE_INDEX]
        assert ((scored >= 0) & (scored < task.num_labels)).all()
    else:
        assert isinstance(example.labels, int) and 0 <= example.labels < task.num_labels


@pytest.mark.parametrize("name", TASK_NAMES)
def test_examples_obey_the_contract(name, corpus, sample_tokenizer):
    task_cls = registered_tasks()[name]
    task = task_cls(sample_tokenizer, max_seq_len=MAX_SEQ_LEN)
    examples = _all_examples(task, corpus, seed=0)
    assert len(examples) >= 5, f"{name} made only {len(examples)} examples from 6 articles"
    for example in examples:
        _check_layout(example, task_cls, task, sample_tokenizer)
    if task_cls.level == "token":
        assert sum(int(np.sum(np.asarray(e.labels) != IGNORE_INDEX)) for e in examples) > 0
    else:
        assert len({e.labels for e in examples}) >= 2, "a sequence task should use >1 label"


@pytest.fixture(scope="module", params=["byte_level_bpe", "unigram"])
def family_tokenizer(request, sample_documents):
    """RoBERTa's byte-level BPE or XLM-R's Unigram, cased, trained on the sample documents."""
    from ernie_style.testing import tokenizers

    train = getattr(tokenizers, f"train_{request.param}")
    return train([d.text for d in sample_documents], vocab_size=1500)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_other_families_tokenizers_obey_the_contract(name, sample_documents, family_tokenizer):
    """Every task on a byte-level BPE and a Unigram vocabulary: the special tokens are the
    tokenizer's (`<s>`, `</s>`), and every segment is whole words of the documents (word
    boundaries come from the corpus's word spans, never from `##` prefixes), but for its last
    word, which truncation may cut; capitalization's words are lower-cased (these vocabularies
    keep case, which would put its labels in the input)."""
    tokenizer = family_tokenizer
    task_cls = registered_tasks()[name]
    task = task_cls(tokenizer, max_seq_len=MAX_SEQ_LEN)
    corpus = CorpusContext(sample_documents, tokenizer)
    examples = _all_examples(task, corpus, seed=0)
    assert len(examples) >= 5, f"{name} made only {len(examples)} examples from 6 articles"
    assert tokenizer.convert_ids_to_tokens([tokenizer.cls_token_id]) == ["<s>"]
    words = {w for d in sample_documents for w in d.words()}
    lower = {w.lower() for w in words}
    assert words != lower  # the documents have capitals
    for example in examples:
        _check_layout(example, task_cls, task, tokenizer)
        ids = list(example.input_ids)
        if name == "knowledge_masking":  # put the masked tokens back (labels hold the originals)
            ids = [i if y == IGNORE_INDEX else y for i, y in zip(ids, example.labels, strict=True)]
        # Capitalization's input is the lower-cased words: no letter case left to read.
        vocabulary = lower if name == "capitalization" else words
        for segment in _segments(ids[1:], tokenizer.sep_token_id):
            *whole, last = tokenizer.decode(segment).split() or [""]
            assert set(whole) <= vocabulary, (name, set(whole) - vocabulary)
            assert any(word.startswith(last) for word in vocabulary), (name, last)


def _segments(ids: list[int], sep_id: int) -> list[list[int]]:
    """`ids` split at `sep_id` (empty pieces dropped: RoBERTa's pair layout repeats `</s>`)."""
    pieces, current = [], []
    for token in ids:
        if token == sep_id:
            pieces.append(current)
            current = []
        else:
            current.append(token)
    return [piece for piece in [*pieces, current] if piece]


@pytest.mark.parametrize("name", TASK_NAMES)
def test_examples_are_deterministic_for_a_seed(name, corpus, sample_tokenizer):
    task = registered_tasks()[name](sample_tokenizer, max_seq_len=MAX_SEQ_LEN)
    first = _all_examples(task, corpus, seed=7)
    again = _all_examples(task, corpus, seed=7)
    assert first == again


@pytest.mark.parametrize("name", TASK_NAMES)
def test_head_shapes_and_loss_decreases(name, corpus, sample_tokenizer):
    torch.manual_seed(0)
    task_cls = registered_tasks()[name]
    task = task_cls(sample_tokenizer, max_seq_len=MAX_SEQ_LEN)
    examples = _all_examples(task, corpus, seed=1)[:16]
    config = build_backbone_config(
        "tiny",
        vocab_size=len(sample_tokenizer),
        hidden_dropout_prob=0,
        attention_probs_dropout_prob=0,
    )
    from transformers import ErnieModel

    model = ErniePretrainingModel(ErnieModel(config), {name: task})
    batch = collate(examples, sample_tokenizer.pad_token_id)
    out = model(batch)
    n_targets = (
        int((batch["labels"] != IGNORE_INDEX).sum()) if task_cls.level == "token" else len(examples)
    )
    assert out.logits.shape == (n_targets, task.num_labels)
    assert out.targets.shape == (n_targets,)
    model.eval()  # no dropout: the loss on a fixed batch must fall; gradients still flow
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(12):
        loss = model(batch).loss
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.9, f"{name} loss did not fall: {losses}"
    metrics = task.metrics(out.logits, out.targets)
    assert 0.0 <= metrics["accuracy"] <= 1.0


@pytest.mark.parametrize("name", TASK_NAMES)
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(texts=st.lists(st.text(max_size=300), min_size=1, max_size=4))
def test_any_unicode_corpus_gives_valid_examples(name, tokenizer, texts):
    docs = RegexAnnotator().annotate(
        [RawDocument(id=f"d{i}", title=t[:20], text=t) for i, t in enumerate(texts)]
    )
    context = CorpusContext(docs, tokenizer)
    task_cls = registered_tasks()[name]
    task = task_cls(tokenizer, max_seq_len=32)
    for example in _all_examples(task, context, seed=0):
        _check_layout(example, task_cls, task, tokenizer, max_len=32)


def test_registry_has_the_seven_ernie2_tasks():
    tasks = registered_tasks()
    assert set(tasks) == {
        "knowledge_masking",
        "capitalization",
        "token_document_relation",
        "sentence_reordering",
        "sentence_distance",
        "discourse_relation",
        "ir_relevance",
    }
    assert sorted(cls.task_id for cls in tasks.values()) == list(range(7))


def test_a_tokenizer_left_truncating_by_an_earlier_call_does_not_cut_documents(tokenizer):
    from ernie_style.corpus.annotate import document_from_sentences
    from ernie_style.pretrain.examples import TokenizedDocument

    doc = document_from_sentences("d", [["The river flows through the valley."] * 4])
    full = TokenizedDocument(doc, tokenizer).token_ids.tolist()
    assert len(full) > 8
    tokenizer(["the river"], truncation=True, max_length=4, padding="max_length")
    assert TokenizedDocument(doc, tokenizer).token_ids.tolist() == full
