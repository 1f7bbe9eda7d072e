"""Fine-tuning data: read and check each task's files, add silver labels, tokenize, batch.

`load_tasks(config, tokenizer)` returns one `EncodedTask` per task: encoded train/dev/test
examples (file order kept), the label list and counted warnings per split. Encoding uses a fast
Hugging Face tokenizer:

* one text or a text pair (`token_type_ids` 0/1), truncated longest-first to `max_seq_len`;
* ranking: each candidate paired with the query, one group per example;
* token classification (`is_split_into_words=True`): the first sub-token of each word carries the
  word's tag, every other position -100.

Counted warnings (`EncodedTask.stats[split]`): `truncated` (examples, or query-candidate pairs,
longer than `max_seq_len`), `words_truncated` (token tasks: words cut off by truncation, their
tags lost), `words_without_subtokens` (words the tokenizer turns into nothing), plus the readers'
`empty_texts` and `rankings_without_positive`. `Collator` pads a batch to its longest sequence,
rounded up to a multiple of 8.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ernie_style.finetune.config import FinetuneConfig, FinetuneTask
from ernie_style.finetune.questions import QuestionCollator, encode_questions, phrase
from ernie_style.finetune.readers import DataError, RawExample, read_examples
from ernie_style.finetune.silver import silver_examples, silver_labels

if TYPE_CHECKING:
    from spacy.language import Language
    from transformers import PreTrainedTokenizerBase

SPLITS = ("train", "dev", "test")
IGNORE_INDEX = -100
Encoded = dict[str, Any]


@dataclass
class Collator:
    """Pads a list of encoded examples of one task type into tensors.

    Returns `input_ids`, `attention_mask`, `token_type_ids` ([B, T]; ranking [B, K, T] with
    `candidate_mask` [B, K], padded candidates holding one attended pad token) and `labels`:
    class ids [B] (long), scores [B] (float), tag ids [B, T] (-100 on padding) or relevance
    grades [B, K] (float, 0 on padded candidates).
    """

    task_type: str
    pad_token_id: int
    pad_to_multiple_of: int = 8

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Pad and stack `examples`."""
        if not examples:
            raise ValueError("cannot collate an empty batch")
        if self.task_type == "ranking":
            return self._ranking(examples)
        length = self._length(max(len(e["input_ids"]) for e in examples))
        batch = self._pad(
            [e["input_ids"] for e in examples], [e["token_type_ids"] for e in examples], length
        )
        labels = [e["labels"] for e in examples]
        if self.task_type == "token_classification":
            batch["labels"] = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
            for row, tags in enumerate(labels):
                batch["labels"][row, : len(tags)] = torch.tensor(tags, dtype=torch.long)
        elif self.task_type == "regression":
            batch["labels"] = torch.tensor(labels, dtype=torch.float)
        else:
            batch["labels"] = torch.tensor(labels, dtype=torch.long)
        return batch

    def _length(self, longest: int) -> int:
        multiple = max(1, self.pad_to_multiple_of)
        return -(-longest // multiple) * multiple

    def _pad(
        self, ids: Sequence[Sequence[int]], types: Sequence[Sequence[int]], length: int
    ) -> dict[str, torch.Tensor]:
        input_ids = torch.full((len(ids), length), self.pad_token_id, dtype=torch.long)
        token_type_ids = torch.zeros((len(ids), length), dtype=torch.long)
        attention_mask = torch.zeros((len(ids), length), dtype=torch.long)
        for row, (seq, seg) in enumerate(zip(ids, types, strict=True)):
            input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            token_type_ids[row, : len(seg)] = torch.tensor(seg, dtype=torch.long)
            attention_mask[row, : len(seq)] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
        }

    def _ranking(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        size, groups = len(examples), max(len(e["input_ids"]) for e in examples)
        length = self._length(max(len(s) for e in examples for s in e["input_ids"]))
        ids, types = [], []
        mask = torch.zeros((size, groups), dtype=torch.bool)
        labels = torch.zeros((size, groups), dtype=torch.float)
        for row, example in enumerate(examples):
            count = len(example["input_ids"])
            ids += [*example["input_ids"], *[[self.pad_token_id]] * (groups - count)]
            types += [*example["token_type_ids"], *[[0]] * (groups - count)]
            mask[row, :count] = True
            labels[row, :count] = torch.tensor(example["labels"], dtype=torch.float)
        batch = {
            key: value.view(size, groups, length)
            for key, value in self._pad(ids, types, length).items()
        }
        batch["candidate_mask"] = mask
        batch["labels"] = labels
        return batch


@dataclass
class EncodedTask:
    """A task's encoded splits, label list, counted warnings and collate function."""

    name: str
    type: str
    labels: list[str] | None
    splits: dict[str, list[Encoded]]
    stats: dict[str, Counter[str]]
    collator: Collator
    task_id: int | None = None
    locations: dict[str, list[str]] = field(default_factory=dict)
    #: Encoder layer the head reads (None: the top), `FinetuneTask.head_layer`.
    head_layer: int | None = None
    #: Tasks whose predictions the head also reads, `FinetuneTask.reads_from`.
    reads_from: list[str] = field(default_factory=list)
    #: Answered by the shared pointer head (`question` template or question_answering type).
    is_question: bool = False

    @property
    def label2id(self) -> dict[str, int]:
        """Label name -> id (empty for regression and ranking)."""
        return {label: i for i, label in enumerate(self.labels or [])}

    @property
    def id2label(self) -> dict[int, str]:
        """Label id -> name (empty for regression and ranking)."""
        return dict(enumerate(self.labels or []))

    @property
    def num_labels(self) -> int:
        """Output size of the task head: label count, or 1 (regression score, ranking score)."""
        return len(self.labels) if self.labels else 1

    def summary(self) -> list[str]:
        """One line per split: example count and counted warnings."""
        lines = []
        for split, examples in self.splits.items():
            warnings = [f"{n} {key}" for key, n in sorted(self.stats[split].items()) if n]
            extra = f" ({', '.join(warnings)})" if warnings else ""
            lines.append(f"{self.name}/{split}: {len(examples)} examples{extra}")
        return lines


def encode_examples(
    task_type: str,
    examples: Sequence[RawExample],
    tokenizer: PreTrainedTokenizerBase,
    max_seq_len: int,
    stats: Counter[str],
) -> list[Encoded]:
    """Tokenize checked examples of one task type; truncations are counted in `stats`."""
    if not examples:
        return []
    if task_type == "token_classification":
        return _encode_words(examples, tokenizer, max_seq_len, stats)
    if task_type == "ranking":
        queries = [e.texts[0] for e in examples for _ in e.candidates or []]
        candidates = [c for e in examples for c in e.candidates or []]
        pairs = _encode_texts(tokenizer, queries, candidates, max_seq_len, stats)
        encoded, start = [], 0
        for example in examples:
            group = pairs[start : start + len(example.candidates or [])]
            start += len(group)
            encoded.append(
                {
                    "input_ids": [ids for ids, _ in group],
                    "token_type_ids": [types for _, types in group],
                    "labels": list(example.label),
                }
            )
        return encoded
    firsts = [e.texts[0] for e in examples]
    seconds = [e.texts[1] for e in examples] if len(examples[0].texts) > 1 else None
    pairs = _encode_texts(tokenizer, firsts, seconds, max_seq_len, stats)
    return [
        {"input_ids": ids, "token_type_ids": types, "labels": example.label}
        for (ids, types), example in zip(pairs, examples, strict=True)
    ]


def _token_types(encoding: Mapping[str, Any], count: int) -> list[list[int]]:
    types = encoding.get("token_type_ids")
    return types if types is not None else [[0] * len(ids) for ids in encoding["input_ids"][:count]]


def _encode_texts(
    tokenizer: PreTrainedTokenizerBase,
    firsts: list[str],
    seconds: list[str] | None,
    max_len: int,
    stats: Counter[str],
) -> list[tuple[list[int], list[int]]]:
    kwargs = {"return_attention_mask": False, "return_token_type_ids": True, "verbose": False}
    full = tokenizer(firsts, seconds, truncation=False, **kwargs)
    ids, types = list(full["input_ids"]), _token_types(full, len(firsts))
    long = [i for i, seq in enumerate(ids) if len(seq) > max_len]
    if long:
        stats["truncated"] += len(long)
        second = [seconds[i] for i in long] if seconds is not None else None
        cut = tokenizer(
            [firsts[i] for i in long], second, truncation=True, max_length=max_len, **kwargs
        )
        cut_types = _token_types(cut, len(long))
        for j, i in enumerate(long):
            ids[i], types[i] = cut["input_ids"][j], cut_types[j]
    return list(zip(ids, types, strict=True))


def _encode_words(
    examples: Sequence[RawExample],
    tokenizer: PreTrainedTokenizerBase,
    max_len: int,
    stats: Counter[str],
) -> list[Encoded]:
    words = [list(e.words or []) for e in examples]
    kwargs = {"is_split_into_words": True, "return_attention_mask": False, "verbose": False}
    full = tokenizer(words, truncation=False, **kwargs)
    long = [i for i, seq in enumerate(full["input_ids"]) if len(seq) > max_len]
    cut = tokenizer([words[i] for i in long], truncation=True, max_length=max_len, **kwargs)
    cut_row = {i: j for j, i in enumerate(long)}
    stats["truncated"] += len(long)
    encoded = []
    for i, example in enumerate(examples):
        present = {w for w in full.word_ids(i) if w is not None}
        stats["words_without_subtokens"] += len(words[i]) - len(present)
        source, row = (cut, cut_row[i]) if i in cut_row else (full, i)
        word_ids = source.word_ids(row)
        kept = {w for w in word_ids if w is not None}
        stats["words_truncated"] += len(present - kept)
        labels, previous = [], None
        for word in word_ids:
            first = word is not None and word != previous
            labels.append(example.label[word] if first else IGNORE_INDEX)
            previous = word
        ids = list(source["input_ids"][row])
        encoded.append({"input_ids": ids, "token_type_ids": [0] * len(ids), "labels": labels})
    return encoded


def load_tasks(
    config: FinetuneConfig,
    tokenizer: PreTrainedTokenizerBase,
    nlp: Language | None = None,
    cache_dir: str | Path | None = None,
) -> dict[str, EncodedTask]:
    """Read, check, silver-label and encode every task of `config`, in config order.

    `nlp`: the spaCy pipeline for silver tasks (default: loads `config.spacy_model` when a task
    needs it). `cache_dir`: where silver tags are cached (the trainer passes a folder in its
    output dir; None: no cache). Raises `DataError` naming FILE:LINE on bad data.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("a fast (Rust) tokenizer is required (word_ids for token tasks)")
    if nlp is None and any(t.is_silver for t in config.tasks):
        from ernie_style.corpus.spacy_annotator import load_pipeline

        nlp = load_pipeline(config.spacy_model)
    labels = {t.name: _task_labels(t, nlp) for t in config.tasks}
    gold: dict[str, dict[str, list[RawExample]]] = {}
    stats: dict[str, dict[str, Counter[str]]] = {t.name: {} for t in config.tasks}
    for task in config.tasks:
        gold[task.name] = {}
        for split, path in task.data.given().items():
            counter = stats[task.name].setdefault(split, Counter())
            gold[task.name][split] = read_examples(task, path, split, counter, labels[task.name])
    loaded = {}
    for task in config.tasks:
        raw = gold[task.name]
        if task.is_silver and task.silver_mix != "gold":
            raw = _mix(task, raw, gold[task.silver_source or ""], nlp, labels[task.name], cache_dir)
        loaded[task.name] = _encode_task(task, raw, labels[task.name], tokenizer, config, stats)
    return loaded


def _task_labels(task: FinetuneTask, nlp: Language | None) -> list[str] | None:
    if task.is_silver:
        assert nlp is not None
        return silver_labels(str(task.labels), nlp)
    return task.label_list


def _mix(
    task: FinetuneTask,
    gold: dict[str, list[RawExample]],
    source: dict[str, list[RawExample]],
    nlp: Language | None,
    labels: list[str] | None,
    cache_dir: str | Path | None,
) -> dict[str, list[RawExample]]:
    assert nlp is not None and labels is not None
    silver = {}
    for split, examples in source.items():
        where = f"silver {task.labels} of {task.silver_source}/{split}"
        silver[split] = silver_examples(examples, str(task.labels), nlp, labels, where, cache_dir)
        if not silver[split] and split in ("train", "dev"):
            raise DataError(f"{task.name}: {where}: no examples (nothing to tag)")
    if task.silver_mix == "silver":
        return silver
    mixed = {"train": gold["train"] + silver.get("train", [])}
    for split in ("dev", "test"):
        if split in gold or split in silver:
            mixed[split] = gold.get(split) or silver[split]
    return mixed


def _encode_task(
    task: FinetuneTask,
    raw: dict[str, list[RawExample]],
    labels: list[str] | None,
    tokenizer: PreTrainedTokenizerBase,
    config: FinetuneConfig,
    stats: dict[str, dict[str, Counter[str]]],
) -> EncodedTask:
    splits, counters, locations = {}, {}, {}
    sep = tokenizer.sep_token or "|"
    for split in SPLITS:
        if split not in raw:
            continue
        counter = counters[split] = stats[task.name].get(split, Counter())
        locations[split] = [e.where for e in raw[split]]
        if task.is_question:  # decaNLP: (question, context) -> answer span, shared pointer
            phrased = phrase(task, raw[split], labels, sep)
            locations[split] = [q.where for q in phrased]  # token tasks: one per entity type
            splits[split] = encode_questions(phrased, tokenizer, config.max_seq_len, counter)
            continue
        splits[split] = encode_examples(
            task.type, raw[split], tokenizer, config.max_seq_len, counter
        )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return EncodedTask(
        name=task.name,
        type=task.type,
        labels=labels,
        splits=splits,
        stats=counters,
        collator=QuestionCollator(pad_id) if task.is_question else Collator(task.type, pad_id),
        task_id=task.task_id,
        head_layer=task.head_layer,
        reads_from=list(task.reads_from),
        is_question=task.is_question,
        locations=locations,
    )
