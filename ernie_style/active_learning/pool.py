"""The unlabeled pool (reading, encoding per task, rewriting without some ids) and the
checks of a task's inputs and labels shared by selection and ingestion.

A pool is a JSONL, CSV or TSV file (or a `datasets.save_to_disk` directory) whose records have
an `id` and the input fields of the tasks: token tasks a words field (a JSON list of words, or a
string split on whitespace), sequence tasks their `text_fields`, ranking tasks `query_field` and
`candidates_field`. A silver task trained on spaCy's tags of another task's words
(`silver_mix: silver`) reads that task's words field. Ids are compared as strings; a missing,
empty or repeated id, a missing field, or an empty pool is an error naming FILE:LINE.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ernie_style.fileio import atomic_dir, atomic_write
from ernie_style.finetune.config import DEFAULT_LABEL_FIELD, FinetuneConfig, FinetuneTask
from ernie_style.finetune.data import Encoded, encode_examples
from ernie_style.finetune.readers import DataError, RawExample, read_records

ID_FIELD = "id"
#: Key of an encoded token example holding its number of words.
NUM_WORDS = "num_words"


@dataclass
class PoolRecord:
    """One pool example: where it was read (FILE:LINE), its id (a string) and all its fields."""

    where: str
    id: str
    fields: dict[str, Any]


@dataclass
class Pool:
    """The records of a pool file, in file order."""

    path: Path
    records: list[PoolRecord]

    @property
    def ids(self) -> list[str]:
        """The ids, in file order."""
        return [r.id for r in self.records]

    def subset(self, indices: Sequence[int]) -> Pool:
        """A pool of the records at `indices` (in that order)."""
        return Pool(self.path, [self.records[i] for i in indices])

    def __len__(self) -> int:
        return len(self.records)


def format_errors(errors: Sequence[str]) -> str:
    """All problems, one per line (never truncated: every bad line is reported)."""
    return "\n".join(errors)


def record_id(value: Any) -> str | None:
    """An id as a string (None when missing or empty; JSON numbers become their text)."""
    if value is None or isinstance(value, bool | dict | list):
        return None
    text = str(value).strip()
    return text or None


def read_pool(path: str | Path) -> Pool:
    """Read a pool; every id must be present, non-empty and unique (errors name FILE:LINE)."""
    path = Path(path)
    records = read_records(path, [])
    errors, seen, out = [], {}, []
    for where, fields in records:
        key = record_id(fields.get(ID_FIELD))
        if key is None:
            got = (
                f"got {fields[ID_FIELD]!r}" if ID_FIELD in fields else f"fields are {list(fields)}"
            )
            errors.append(f"{where}: missing or empty {ID_FIELD!r} ({got})")
        elif key in seen:
            errors.append(f"{where}: duplicate id {key!r} (first at {seen[key]})")
        else:
            seen[key] = where
            out.append(PoolRecord(where, key, fields))
    if errors:
        raise DataError(format_errors(errors))
    if not out:
        raise DataError(f"{path}: the pool is empty (no examples)")
    return Pool(path, out)


def words_field(task: FinetuneTask, config: FinetuneConfig) -> str:
    """The pool field holding a token task's words (a silver-only task: its source's)."""
    if task.text_fields:
        return task.text_fields[0]
    source = config.task(task.silver_source or "")
    if source.type != "token_classification" or not source.text_fields:
        raise ValueError(
            f"task {task.name!r} tags the texts of {source.name!r} with spaCy; scoring a pool "
            "for it needs a token-classification silver_source (a words field)"
        )
    return source.text_fields[0]


def input_fields(task: FinetuneTask, config: FinetuneConfig) -> list[str]:
    """The pool fields a task reads (and a labeled file of the task holds besides the label)."""
    if task.type == "token_classification":
        return [words_field(task, config)]
    if task.type == "ranking":
        return [task.query_field or "", task.candidates_field or ""]
    return list(task.text_fields)


def _at(where: str, message: str) -> str:
    return f"{where}: {message}" if where else message


def parse_words(where: str, name: str, value: Any) -> list[str]:
    """A list of words from a JSON list (or a string holding one) or a whitespace string."""
    if isinstance(value, str):
        text = value.strip()
        if not text.startswith("["):
            return text.split()
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(_at(where, f"field {name!r}: invalid JSON list: {error.msg}")) from None
        except (ValueError, RecursionError):  # a number too long, nesting too deep
            raise DataError(_at(where, f"field {name!r}: invalid JSON list")) from None
    if not isinstance(value, list | tuple) or not all(isinstance(w, str) for w in value):
        raise DataError(_at(where, f"field {name!r} must be a list of words"))
    return list(value)


@dataclass
class TaskSpec:
    """What a labeled example of a task holds: its input fields and a label of its type."""

    name: str
    type: str
    labels: list[str] | None
    fields: list[str]
    label_field: str

    @classmethod
    def of(cls, task: FinetuneTask, config: FinetuneConfig, labels: list[str] | None) -> TaskSpec:
        """The spec of a config's task (`labels`: its label list, silver ones resolved)."""
        label_field = task.label_field or DEFAULT_LABEL_FIELD[task.type]
        return cls(task.name, task.type, labels, input_fields(task, config), label_field)

    @property
    def sized_field(self) -> str | None:
        """The list field a label must match in length (words; ranking: candidates)."""
        if self.type == "token_classification":
            return self.fields[0]
        return self.fields[-1] if self.type == "ranking" else None


def _short(value: Any, limit: int = 60) -> str:
    """`repr(value)`, cut to `limit` characters (a bad label may be a whole document)."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # a huge int, a deeply nested list
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _number(value: Any) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{_short(value)} is not a number") from None
    if not math.isfinite(number):
        raise DataError(f"{_short(value)} is not a finite number")
    return number


def normalize_label(spec: TaskSpec, value: Any, size: int | None = None) -> Any:
    """A label checked against the task (`size`: its words or candidates) in canonical form:
    tag list, label name, float score, candidate index or grade list. Raises `DataError`."""
    names = spec.labels or []
    if value is None:
        raise DataError("no label")
    if spec.type == "token_classification":
        if isinstance(value, list) and None in value:
            missing = [i for i, tag in enumerate(value) if tag is None]
            raise DataError(f"no tag for word(s) {missing} (0-based)")
        tags = parse_words("", spec.label_field, value)
        if size is not None and len(tags) != size:
            raise DataError(f"{size} words but {len(tags)} tags")
        bad = sorted({t for t in tags if t not in names})
        if bad:
            raise DataError(f"tag(s) {bad} not in labels {names}")
        return tags
    if spec.type == "regression":
        return _number(value)
    if spec.type == "ranking":
        if isinstance(value, list | tuple):
            if size is not None and len(value) != size:
                raise DataError(f"{len(value)} grades for {size} candidates")
            return [_number(v) for v in value]
        index = _number(value)
        if index != int(index) or (size is not None and not 0 <= index < size):
            raise DataError(f"{_short(value)} is not a candidate index (0..{(size or 1) - 1})")
        return int(index)
    if isinstance(value, dict | list | bool):
        raise DataError(f"{_short(value)} is not a label name")
    label = str(value).strip()
    if label not in names:
        raise DataError(f"label {label!r} not in labels {names}")
    return label


def _example(task: FinetuneTask, fields: list[str], record: PoolRecord) -> RawExample:
    """A `RawExample` with placeholder labels; token tasks' labels are the word indices, so the
    labelled positions of the encoding say which word each first sub-token belongs to."""
    where, values = record.where, record.fields
    missing = [f for f in fields if f not in values]
    if missing:
        raise DataError(f"{where}: task {task.name!r} needs field(s) {missing}")
    if task.type == "token_classification":
        words = parse_words(where, fields[0], values[fields[0]])
        if not words:
            raise DataError(f"{where}: field {fields[0]!r}: no words")
        return RawExample(where, words=words, label=list(range(len(words))))
    if task.type == "ranking":
        candidates = parse_words(where, fields[1], values[fields[1]])
        if len(candidates) < 2:
            raise DataError(f"{where}: field {fields[1]!r}: at least 2 candidates are needed")
        label = [0.0] * len(candidates)
        return RawExample(where, [str(values[fields[0]])], candidates=candidates, label=label)
    texts = [str(values[f]) for f in fields]
    return RawExample(where, texts, label=0.0 if task.type == "regression" else 0)


def encode_pool(
    pool: Pool, task: FinetuneTask, config: FinetuneConfig, tokenizer: Any
) -> list[Encoded]:
    """Encode every pool record for `task` like its training data (placeholder labels).

    Token tasks: the label at each word's first sub-token is the word's index (-100 elsewhere)
    and `num_words` holds the word count (truncation may cut words off). All problems of the
    pool are reported at once (FILE:LINE)."""
    fields = input_fields(task, config)
    examples, errors = [], []
    for record in pool.records:
        try:
            example = _example(task, fields, record)
        except DataError as error:
            errors.append(str(error))
            continue
        examples.append(example)
    if errors:
        raise DataError(format_errors(errors))
    encoded = encode_examples(task.type, examples, tokenizer, config.max_seq_len, Counter())
    if task.type == "token_classification":
        for item, example in zip(encoded, examples, strict=True):
            item[NUM_WORDS] = len(example.words or [])
    return encoded


def write_pool_without(path: str | Path, remove: Collection[str]) -> int:
    """Rewrite a pool file (atomically) without the records whose id is in `remove`; returns
    how many were removed. JSONL keeps the other lines byte for byte; CSV/TSV are re-written
    with the same header; a saved dataset directory is filtered and swapped in."""
    path = Path(path)
    pool = read_pool(path)
    drop = {r.id for r in pool.records} & {str(x) for x in remove}
    if not drop:
        return 0
    if path.is_dir():
        _rewrite_dataset(path, drop)
    elif path.suffix.lower() == ".jsonl":
        kept = []
        # Split at "\n" only, as `read_records` does: U+2028 may sit inside a JSON string.
        for line in path.read_text(encoding="utf-8-sig").split("\n"):
            if line.strip() and record_id(json.loads(line).get(ID_FIELD)) in drop:
                continue
            kept.append(line)
        atomic_write(path, "\n".join(kept))
    else:
        _rewrite_table(path, pool, drop)
    return len(drop)


def _rewrite_table(path: Path, pool: Pool, drop: set[str]) -> None:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    header = list(pool.records[0].fields)
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\n")
    writer.writerow(header)
    for record in pool.records:
        if record.id not in drop:
            writer.writerow([record.fields[name] for name in header])
    atomic_write(path, out.getvalue())


def _rewrite_dataset(path: Path, drop: set[str]) -> None:
    import datasets

    dataset = datasets.load_from_disk(str(path))
    kept = dataset.filter(lambda row: record_id(row[ID_FIELD]) not in drop)
    with atomic_dir(path) as tmp:  # the old pool stays in place until the new one is whole
        kept.save_to_disk(str(tmp))
