"""Read fine-tuning data files into checked examples; every problem names FILE:LINE.

Formats: CSV (`.csv`) and TSV (`.tsv`) with a header row (read with the `csv` module, standard
double-quote quoting), JSONL (`.jsonl`, one object per line) and directories written by
`datasets.Dataset.save_to_disk` (locations are then `DIR: row N`, 0-based). `ClassLabel`
features of saved datasets are read as their label names.

Errors (a `DataError`, all problems of a file at once, the first ten shown): unreadable or
non-UTF-8 file, missing column or field, malformed JSON line, wrong number of CSV fields, a label
outside the label list, a non-numeric score, token/tag count mismatch, bad ranking labels, an
empty train or dev set. Counted warnings (the caller's `Counter`): `empty_texts`,
`rankings_without_positive`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ernie_style.finetune.config import FinetuneTask

MAX_SHOWN_ERRORS = 10


class DataError(ValueError):
    """A problem with a data file; the message names the file and line (or row)."""


@dataclass
class RawExample:
    """One checked, not yet tokenized example.

    `texts`: 1 or 2 texts (ranking: the query); `words`: token tasks' words; `candidates`:
    ranking candidates; `label`: class id, score, tag ids (token) or relevance grades (ranking).
    """

    where: str
    texts: list[str] = field(default_factory=list)
    words: list[str] | None = None
    candidates: list[str] | None = None
    label: Any = None


def raise_errors(errors: Sequence[str], path: str | Path) -> None:
    """Raise one `DataError` listing `errors` (the first MAX_SHOWN_ERRORS), if there are any."""
    if not errors:
        return
    shown = list(errors[:MAX_SHOWN_ERRORS])
    if len(errors) > MAX_SHOWN_ERRORS:
        shown.append(f"... and {len(errors) - MAX_SHOWN_ERRORS} more problems in {path}")
    raise DataError("\n".join(shown))


def read_records(path: str | Path, required: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """`(location, record)` pairs of a CSV/TSV/JSONL file or saved dataset directory; every
    record has the `required` fields (else a `DataError` naming FILE:LINE)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file does not exist")
    if path.is_dir():
        return _read_saved_dataset(path, required)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".jsonl"):
        raise DataError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv or .jsonl")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read: {error}") from error
    if suffix == ".jsonl":
        return _read_jsonl(path, data, required)
    return _read_table(path, _decode(path, data), "\t" if suffix == ".tsv" else ",", required)


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text ({error.reason})") from error


def _missing(required: Sequence[str], present: Sequence[str]) -> str | None:
    missing = [f for f in required if f not in present]
    if not missing:
        return None
    return f"no column {missing[0]!r}" if len(missing) == 1 else f"no columns {missing}"


def _read_table(
    path: Path, text: str, delimiter: str, required: Sequence[str]
) -> list[tuple[str, dict[str, Any]]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise DataError(f"{path}: empty file (no header row)") from None
    except csv.Error as error:
        raise DataError(f"{path}: line 1 (header): {error}") from error
    problem = _missing(required, header)
    if problem:
        raise DataError(f"{path}: line 1 (header): {problem}; columns are {header}")
    records, errors = [], []
    start = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            raise DataError(f"{path}:{reader.line_num}: {error}") from error
        line, start = start, reader.line_num + 1
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) != len(header):
            errors.append(f"{path}:{line}: {len(row)} fields, the header has {len(header)}")
            continue
        records.append((f"{path}:{line}", dict(zip(header, row, strict=True))))
    raise_errors(errors, path)
    return records


def _read_jsonl(
    path: Path, data: bytes, required: Sequence[str]
) -> list[tuple[str, dict[str, Any]]]:
    records, errors = [], []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if number == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        if not raw.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as error:
            errors.append(f"{where}: not UTF-8 text ({error.reason})")
            continue
        except json.JSONDecodeError as error:
            errors.append(f"{where}: invalid JSON: {error.msg} (column {error.colno})")
            continue
        except (ValueError, RecursionError) as error:  # a number too long, nesting too deep
            errors.append(f"{where}: invalid JSON: {_json_problem(error)}")
            continue
        if not isinstance(record, dict):
            errors.append(f"{where}: expected a JSON object, got {type(record).__name__}")
            continue
        problem = _missing(required, list(record))
        if problem:
            errors.append(
                f"{where}: {problem.replace('column', 'field')}; fields are {list(record)}"
            )
            continue
        records.append((where, record))
    raise_errors(errors, path)
    return records


def _read_saved_dataset(path: Path, required: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as error:
        raise DataError(f"{path}: not a saved `datasets` dataset: {error}") from error
    if isinstance(dataset, datasets.DatasetDict):
        raise DataError(
            f"{path}: a DatasetDict with splits {list(dataset)}; give one split's directory "
            f"(e.g. {path / next(iter(dataset))})"
        )
    problem = _missing(required, dataset.column_names)
    if problem:
        raise DataError(f"{path}: {problem}; columns are {dataset.column_names}")
    names = {name: _class_names(dataset.features[name]) for name in dataset.column_names}
    records = []
    for row, record in enumerate(dataset):
        for name, classes in names.items():
            if classes is not None:
                record[name] = _to_names(record[name], classes)
        records.append((f"{path}: row {row}", record))
    return records


def _class_names(feature: Any) -> list[str] | None:
    for candidate in (feature, getattr(feature, "feature", None)):
        names = getattr(candidate, "names", None)
        if names:
            return list(names)
    return None


def _to_names(value: Any, classes: list[str]) -> Any:
    if isinstance(value, list):
        return [_to_names(v, classes) for v in value]
    if isinstance(value, int) and 0 <= value < len(classes):
        return classes[value]
    return value


def required_fields(task: FinetuneTask) -> list[str]:
    """The fields a task's data files must have."""
    if task.type == "ranking":
        return [task.query_field or "", task.candidates_field or "", task.label_field or ""]
    return [*task.text_fields, task.label_field or ""]


def read_examples(
    task: FinetuneTask,
    path: str | Path,
    split: str,
    stats: Counter[str],
    labels: Sequence[str] | None = None,
) -> list[RawExample]:
    """Checked examples of one split of `task` (token tasks: with gold tags). `labels` replaces
    the task's label list (silver tasks). Errors name FILE:LINE; warnings are counted in
    `stats`. An empty train or dev set is an error."""
    records = read_records(path, required_fields(task))
    labels = task.label_list if labels is None else labels
    label2id = {label: i for i, label in enumerate(labels or [])}
    examples, errors = [], []
    for where, record in records:
        try:
            examples.append(_parse(task, where, record, label2id, stats))
        except DataError as error:
            errors.append(str(error))
    raise_errors(errors, path)
    if not examples and split in ("train", "dev"):
        raise DataError(f"{path}: no examples (the {split} set is empty)")
    return examples


def _parse(
    task: FinetuneTask,
    where: str,
    record: dict[str, Any],
    label2id: dict[str, int],
    stats: Counter[str],
) -> RawExample:
    if task.type == "token_classification":
        return _parse_tokens(task, where, record, label2id)
    if task.type == "ranking":
        return _parse_ranking(task, where, record, stats)
    label_field = task.label_field or ""
    value = record[label_field]
    texts = [_text(where, name, record[name], stats) for name in task.text_fields]
    if task.type == "regression":
        return RawExample(where, texts, label=_number(where, label_field, value))
    if task.type == "question_answering":
        answer = _text(where, label_field, value, stats)
        if not answer or answer not in texts[1]:
            raise DataError(f"{where}: the answer {answer!r} does not occur in the context")
        return RawExample(where, texts, label=answer)
    label = _label_name(value)
    if label not in label2id:
        raise DataError(f"{where}: label {label!r} not in labels {list(label2id)}")
    return RawExample(where, texts, label=label2id[label])


def _label_name(value: Any) -> str:
    return str(value).strip() if not isinstance(value, str) else value.strip()


def _text(where: str, name: str, value: Any, stats: Counter[str]) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: field {name!r} must be text, got {type(value).__name__}")
    if not value.strip():
        stats["empty_texts"] += 1
    return value


def _json_problem(error: Exception) -> str:
    """A short reason for a JSON value Python refuses (too deep, or a number too long)."""
    if isinstance(error, RecursionError):
        return "nested too deeply"
    return str(error).split(":")[0]


def _number(where: str, name: str, value: Any) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{where}: {name} {str(value)[:60]!r} is not a number") from None
    if not math.isfinite(number):
        raise DataError(f"{where}: {name} {value!r} is not a finite number")
    return number


def _sequence(where: str, name: str, value: Any) -> list[Any]:
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("["):
            try:
                value = json.loads(stripped)
            except json.JSONDecodeError as error:
                raise DataError(
                    f"{where}: field {name!r}: invalid JSON list: {error.msg}"
                ) from None
            except (ValueError, RecursionError) as error:
                raise DataError(
                    f"{where}: field {name!r}: invalid JSON list: {_json_problem(error)}"
                ) from None
        else:
            return stripped.split()
    if not isinstance(value, list | tuple):
        raise DataError(f"{where}: field {name!r} must be a list, got {type(value).__name__}")
    return list(value)


def _parse_tokens(
    task: FinetuneTask, where: str, record: dict[str, Any], label2id: dict[str, int]
) -> RawExample:
    words_field, tags_field = task.text_fields[0], task.label_field or ""
    words = _sequence(where, words_field, record[words_field])
    tags = _sequence(where, tags_field, record[tags_field])
    if not words:
        raise DataError(f"{where}: no tokens")
    if not all(isinstance(w, str) for w in words):
        raise DataError(f"{where}: field {words_field!r} must be a list of strings")
    if len(words) != len(tags):
        raise DataError(f"{where}: {len(words)} tokens but {len(tags)} tags")
    for tag in tags:
        if _label_name(tag) not in label2id:
            raise DataError(f"{where}: tag {_label_name(tag)!r} not in labels {list(label2id)}")
    return RawExample(where, words=words, label=[label2id[_label_name(t)] for t in tags])


def _parse_ranking(
    task: FinetuneTask, where: str, record: dict[str, Any], stats: Counter[str]
) -> RawExample:
    query_field, candidates_field = task.query_field or "", task.candidates_field or ""
    label_field = task.label_field or ""
    query = _text(where, query_field, record[query_field], stats)
    value = record[candidates_field]
    if isinstance(value, str):
        candidates = _sequence(where, candidates_field, value if value.strip() else "[]")
    else:
        candidates = _sequence(where, candidates_field, value)
    if len(candidates) < 2:
        raise DataError(f"{where}: field {candidates_field!r}: at least 2 candidates are needed")
    candidates = [_text(where, candidates_field, c, stats) for c in candidates]
    label = record[label_field]
    if isinstance(label, str) and label.strip().startswith("["):
        label = _sequence(where, label_field, label)
    if isinstance(label, list | tuple):
        if len(label) != len(candidates):
            raise DataError(
                f"{where}: {len(label)} relevance grades for {len(candidates)} candidates"
            )
        grades = [_number(where, label_field, g) for g in label]
    else:
        index = _number(where, label_field, label)
        if index != int(index) or not 0 <= index < len(candidates):
            raise DataError(
                f"{where}: {label_field} {label!r} is not a candidate index "
                f"(0..{len(candidates) - 1})"
            )
        grades = [1.0 if i == int(index) else 0.0 for i in range(len(candidates))]
    if max(grades) <= 0:
        stats["rankings_without_positive"] += 1
    return RawExample(where, [query], candidates=candidates, label=grades)
