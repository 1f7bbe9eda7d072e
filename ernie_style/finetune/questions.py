"""Tasks as questions (decaNLP, McCann et al. 2018): (question, context) -> an answer span.

A task with a `question` template (classification, pair classification, token classification)
or of type `question_answering` is phrased as questions and answered by one pointer head shared
by every such task, with no task-specific parameters: start and end logits over the positions
of `[CLS] question [SEP] context [SEP]`, the answer a span of the question or the context.

- classification / pair classification: the template's `{labels}` becomes the label words
  ("positive or negative", from `label_words`, default the label names); the context is the
  text (a pair: text_a SEP text_b); the answer is the label word in the question. Prediction
  points at one of the label words (the span with the highest start + end score).
- token classification: one question per entity type of the BIO labels, the template's `{type}`
  filled with the type's word, followed by the word "none"; the answer is the first entity of
  that type in the sentence, or "none". Entity precision/recall/F1 compare the predicted spans
  with every gold entity of the type.
- question_answering: question and context fields; the answer text must occur in the context
  (its first occurrence is the span); exact match and token-overlap F1 of the span.

Free answers (entities, QA) are the best span of at most `MAX_ANSWER_TOKENS` tokens in the
context, or a candidate (the "none" word).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ernie_style.finetune.readers import DataError, RawExample

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

NONE_WORD = "none"
MAX_ANSWER_TOKENS = 128

Span = tuple[int, int, int]  # (segment: 0 question / 1 context, char start, char end)


@dataclass
class QuestionExample:
    """One (question, context) pair with its answer and the spans decoding may choose."""

    where: str
    question: str
    context: str
    answer: Span | None
    candidates: list[Span] = field(default_factory=list)
    free: bool = False
    label: int = -1
    gold: list[Span] = field(default_factory=list)
    kind: str = ""  # token tasks: the entity type asked about


def label_phrase(words: Sequence[str]) -> str:
    """'a', 'a or b', 'a, b or c'."""
    words = list(words)
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def class_question(template: str, words: Sequence[str]) -> tuple[str, list[Span]]:
    """The question with `{labels}` filled in and the character span of each label word."""
    if "{labels}" not in template:
        raise ValueError(f"question {template!r}: a classification question needs {{labels}}")
    prefix, suffix = template.split("{labels}", 1)
    spans, text = [], prefix
    for i, word in enumerate(words):
        if i:
            text += " or " if i == len(words) - 1 else ", "
        spans.append((0, len(text), len(text) + len(word)))
        text += word
    return text + suffix, spans


def entity_types(labels: Sequence[str]) -> list[str]:
    """Entity types of BIO labels, in order of first appearance."""
    seen: dict[str, None] = {}
    for label in labels:
        if label != "O":
            seen.setdefault(label.split("-", 1)[1], None)
    return list(seen)


def entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, first word, last word) of each BIO entity (an I- without a B- starts one)."""
    found: list[tuple[str, int, int]] = []
    for i, tag in enumerate(tags):
        if tag == "O":
            continue
        prefix, kind = tag.split("-", 1)
        if prefix == "I" and found and found[-1][0] == kind and found[-1][2] == i - 1:
            found[-1] = (kind, found[-1][1], i)
        else:
            found.append((kind, i, i))
    return found


def _type_word(kind: str, words: Mapping[str, str]) -> str:
    return words.get(kind, kind.replace("-", " ").replace("_", " "))


def phrase(
    task: Any, examples: Sequence[RawExample], labels: Sequence[str] | None, sep: str
) -> list[QuestionExample]:
    """`examples` of `task` (a FinetuneTask in question mode) as questions."""
    words = dict(task.label_words or {})
    if task.type == "question_answering":
        return [_qa_example(e) for e in examples]
    if task.type == "token_classification":
        types = entity_types(labels or [])
        return [q for e in examples for q in _tag_examples(task, e, labels or [], types, words)]
    names = list(labels or [])
    question, spans = class_question(task.question, [words.get(n, n) for n in names])
    out = []
    for example in examples:
        context = example.texts[0] if len(example.texts) == 1 else f" {sep} ".join(example.texts)
        label = int(example.label)
        out.append(
            QuestionExample(example.where, question, context, spans[label], spans, label=label)
        )
    return out


def _qa_example(example: RawExample) -> QuestionExample:
    question, context = example.texts
    start = context.find(example.label)
    if start < 0:
        raise DataError(f"{example.where}: the answer {example.label!r} is not in the context")
    span = (1, start, start + len(example.label))
    return QuestionExample(example.where, question, context, span, free=True, gold=[span])


def _tag_examples(
    task: Any,
    example: RawExample,
    labels: Sequence[str],
    types: Sequence[str],
    words: Mapping[str, str],
) -> list[QuestionExample]:
    tokens = list(example.words or [])
    starts, position = [], 0
    for token in tokens:
        starts.append(position)
        position += len(token) + 1
    context = " ".join(tokens)
    found = entities([labels[t] for t in example.label])
    out = []
    for kind in types:
        question = task.question.replace("{type}", _type_word(kind, words)) + " " + NONE_WORD
        none = (0, len(question) - len(NONE_WORD), len(question))
        gold = [(1, starts[a], starts[b] + len(tokens[b])) for k, a, b in found if k == kind]
        out.append(
            QuestionExample(
                example.where, question, context, gold[0] if gold else none, [none],
                free=True, gold=gold, kind=kind,
            )
        )  # fmt: skip
    return out


def encode_questions(
    examples: Sequence[QuestionExample],
    tokenizer: PreTrainedTokenizerBase,
    max_len: int,
    stats: Counter[str],
) -> list[dict[str, Any]]:
    """Tokenize (question, context) pairs (the context truncated) and map every character
    span to token positions; an answer cut off by truncation points at [CLS] (counted)."""
    if not examples:
        return []
    kwargs = {"return_token_type_ids": True, "return_offsets_mapping": True, "verbose": False}
    questions = [e.question for e in examples]
    contexts = [e.context for e in examples]
    full = tokenizer(questions, contexts, truncation=False, return_attention_mask=False)
    stats["truncated"] += sum(len(ids) > max_len for ids in full["input_ids"])
    enc = tokenizer(questions, contexts, truncation="only_second", max_length=max_len, **kwargs)
    encoded = []
    for i, example in enumerate(examples):
        segments, offsets = enc.sequence_ids(i), enc["offset_mapping"][i]

        def locate(span: Span, segments=segments, offsets=offsets) -> tuple[int, int] | None:
            segment, begin, end = span
            inside = [
                j for j, (s, (a, b)) in enumerate(zip(segments, offsets, strict=True))
                if s == segment and b > a and a < end and b > begin
            ]  # fmt: skip
            return (inside[0], inside[-1]) if inside else None

        answer = locate(example.answer) if example.answer else None
        if example.answer and answer is None:
            stats["answers_truncated"] += 1
        context = [j for j, s in enumerate(segments) if s == 1]
        encoded.append(
            {
                "input_ids": enc["input_ids"][i],
                "token_type_ids": enc["token_type_ids"][i],
                "labels": list(answer or (0, 0)),
                "candidate_spans": [list(locate(c) or (-1, -1)) for c in example.candidates],
                "context_range": [context[0], context[-1]]
                if example.free and context
                else [-1, -1],
                "gold_spans": [list(g) for g in map(locate, example.gold) if g is not None],
                "class_id": example.label,
                "kind": example.kind,
            }
        )
    return encoded


def _pad_spans(rows: Sequence[Sequence[Sequence[int]]]) -> torch.Tensor:
    width = max([len(r) for r in rows] + [1])
    out = torch.full((len(rows), width, 2), -1, dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def collate_questions(
    examples: Sequence[Mapping[str, Any]], pad_token_id: int, multiple: int = 8
) -> dict[str, torch.Tensor]:
    """Pad question examples: encoder inputs, `labels` [B, 2] (start, end), `candidate_spans`
    [B, K, 2] and `gold_spans` [B, G, 2] (-1 padded), `context_range` [B, 2], `class_id` [B]."""
    longest = max(len(e["input_ids"]) for e in examples)
    length = -(-longest // multiple) * multiple
    size = len(examples)
    input_ids = torch.full((size, length), pad_token_id, dtype=torch.long)
    token_type_ids = torch.zeros((size, length), dtype=torch.long)
    attention_mask = torch.zeros((size, length), dtype=torch.long)
    for row, example in enumerate(examples):
        count = len(example["input_ids"])
        input_ids[row, :count] = torch.tensor(example["input_ids"])
        token_type_ids[row, :count] = torch.tensor(example["token_type_ids"])
        attention_mask[row, :count] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": token_type_ids,
        "labels": torch.tensor([e["labels"] for e in examples], dtype=torch.long),
        "candidate_spans": _pad_spans([e["candidate_spans"] for e in examples]),
        "gold_spans": _pad_spans([e["gold_spans"] for e in examples]),
        "context_range": torch.tensor([e["context_range"] for e in examples], dtype=torch.long),
        "class_id": torch.tensor([e["class_id"] for e in examples], dtype=torch.long),
    }


@dataclass
class QuestionCollator:
    """`collate_questions` with a pad id (the fine-tuning `Collator` of question tasks)."""

    pad_token_id: int
    task_type: str = "question_answering"

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Pad and stack `examples`."""
        if not examples:
            raise ValueError("cannot collate an empty batch")
        return collate_questions(examples, self.pad_token_id)


def best_spans(logits: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> list[tuple[int, int]]:
    """The answer span of each row: the best free span (s <= e < s + MAX_ANSWER_TOKENS) in the
    context range, or a candidate span, by start + end score."""
    spans = []
    for row in range(logits.shape[0]):
        start, end = logits[row, :, 0], logits[row, :, 1]
        best, score = (0, 0), float("-inf")
        for s, e in batch["candidate_spans"][row].tolist():
            if s >= 0 and float(start[s] + end[e]) > score:
                best, score = (s, e), float(start[s] + end[e])
        first, last = batch["context_range"][row].tolist()
        if first >= 0:
            pair = start[first : last + 1, None] + end[None, first : last + 1]
            band = torch.ones_like(pair, dtype=torch.bool).triu().tril(MAX_ANSWER_TOKENS - 1)
            pair = pair.masked_fill(~band, float("-inf"))
            flat = int(pair.argmax())
            value = float(pair.reshape(-1)[flat])
            if value > score:
                s, e = divmod(flat, pair.shape[1])
                best, score = (first + s, first + e), value
        spans.append(best)
    return spans


def collect_answers(
    task_type: str,
    logits: torch.Tensor,
    batch: Mapping[str, torch.Tensor],
    examples: Sequence[Mapping[str, Any]],
    labels: Sequence[str],
) -> list[tuple[Any, Any, Any, Any]]:
    """(prediction, reference, raw prediction, raw reference) per example of a question task:
    label names and class ids (classification), entity spans (token tasks: the type asked,
    the predicted span or None, every gold span) or answer spans (QA)."""
    rows = []
    for row, (span, example) in enumerate(zip(best_spans(logits, batch), examples, strict=True)):
        candidates = [tuple(c) for c in batch["candidate_spans"][row].tolist()]
        gold = [tuple(g) for g in example["gold_spans"]]
        if task_type in ("classification", "pair_classification"):
            predicted, reference = candidates.index(span), example["class_id"]
            rows.append((labels[predicted], labels[reference], predicted, reference))
        elif task_type == "token_classification":
            answer = None if span in candidates else span
            prediction = {"type": example["kind"], "span": answer}
            reference = {"type": example["kind"], "spans": gold}
            rows.append((prediction, reference, answer, gold))
        else:
            rows.append(({"span": span}, {"span": gold[0] if gold else None}, span, gold))
    return rows


def question_metrics(
    task_type: str, names: Sequence[str], predicted: list[Any], gold: list[Any]
) -> dict[str, float]:
    """The named metrics of a question task from `collect_answers`' raw columns."""
    if task_type == "token_classification":
        hits = sum(p is not None and p in g for p, g in zip(predicted, gold, strict=True))
        made = sum(p is not None for p in predicted)
        wanted = sum(len(g) for g in gold)
        precision = hits / made if made else 0.0
        recall = hits / wanted if wanted else 0.0
        f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
        values = {"entity_precision": precision, "entity_recall": recall, "entity_f1": f1}
        return {n: values[n] for n in names}
    from ernie_style.finetune.metrics import compute_metrics

    return compute_metrics(names, predicted, gold)
