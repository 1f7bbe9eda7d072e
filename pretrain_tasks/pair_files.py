"""Labelled pair files that tasks read beside (or instead of) pairs mined from the corpus:
TSV or CSV with a header, or JSONL; every bad row is an error naming the file and line."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ernie_style.corpus.annotate import RawDocument, RegexAnnotator
from ernie_style.pretrain.examples import CorpusContext, Example, TokenizedDocument, assemble

PAIRS_MODES = ("add", "replace")


def tokenize_text(text: str, tokenizer: Any) -> TokenizedDocument:
    """A free text split into words by `RegexAnnotator` and tokenized word-aligned, as the
    prepared documents are.
    """
    return TokenizedDocument(RegexAnnotator().annotate_one(RawDocument("", "", text)), tokenizer)


def row_error(path: str | Path, line: int, message: str) -> ValueError:
    """A ValueError naming the file and line of a bad row."""
    return ValueError(f"{path}, line {line}: {message}")


def read_rows(path: str | Path, fields: Sequence[str]) -> list[tuple[int, dict[str, Any]]]:
    """The rows of a TSV (header line, tab-separated, no quoting), CSV (header line) or JSONL
    file (chosen by the suffix) as `(line number, {field: value})`. Blank lines are skipped;
    a missing field, a wrong column count or invalid JSON raises a ValueError naming the line.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".tsv", ".tab", ".csv", ".jsonl", ".ndjson", ".json"):
        raise ValueError(f"{path}: unknown pair file format {suffix!r} (use .tsv, .csv, .jsonl)")
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            if suffix in (".jsonl", ".ndjson", ".json"):
                return _read_jsonl(path, handle, fields)
            if suffix == ".csv":
                records = _csv_records(handle)
            else:
                records = ((n, line.rstrip("\r\n").split("\t")) for n, line in enumerate(handle, 1))
            return _read_table(path, records, fields)
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error})") from error
    except csv.Error as error:
        raise ValueError(f"{path}: malformed CSV ({error})") from error


def _csv_records(handle: Any) -> Any:
    reader = csv.reader(handle)
    start = 1
    for record in reader:
        yield start, record
        start = reader.line_num + 1


def _read_table(
    path: Path, records: Any, fields: Sequence[str]
) -> list[tuple[int, dict[str, Any]]]:
    header: list[str] | None = None
    rows = []
    for line, record in records:
        if not any(cell.strip() for cell in record):
            continue
        if header is None:
            header = [cell.strip() for cell in record]
            missing = [f for f in fields if f not in header]
            if missing:
                raise row_error(path, line, f"header {header} lacks field(s) {missing}")
            continue
        if len(record) != len(header):
            raise row_error(path, line, f"{len(record)} columns, the header has {len(header)}")
        rows.append((line, dict(zip(header, record, strict=True))))
    return rows


def _read_jsonl(path: Path, handle: Any, fields: Sequence[str]) -> list[tuple[int, dict]]:
    rows = []
    for line, text in enumerate(handle, 1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as error:
            raise row_error(path, line, f"invalid JSON ({error.msg})") from error
        if not isinstance(row, dict):
            raise row_error(path, line, "expected a JSON object")
        missing = [f for f in fields if f not in row]
        if missing:
            raise row_error(path, line, f"missing field(s) {missing}")
        rows.append((line, row))
    return rows


def text_field(path: str | Path, line: int, row: dict[str, Any], field: str) -> str:
    """A non-empty string field of a pair-file row (stripped)."""
    value = row[field]
    if not isinstance(value, str) or not value.strip():
        raise row_error(path, line, f"field {field!r} must be a non-empty string, got {value!r}")
    return value.strip()


class PairFileMixin:
    """For tasks on sentence pairs with an optional labelled pair file: `corpus_examples`
    returns the file's examples (`_load_file`, read and tokenized once), `_pair_example`
    assembles `[CLS] first [SEP] second [SEP]`.
    """

    name: str
    task_id: int
    config: Any
    tokenizer: Any
    max_seq_len: int
    _file_examples: list[Example] | None = None

    def _load_file(self, path: str) -> list[Example]:
        raise NotImplementedError

    def corpus_examples(self, rng: np.random.Generator, corpus: CorpusContext) -> list[Example]:
        """The pairs of `pairs_file`, in file order (read and tokenized once)."""
        del rng, corpus
        if not self.config.pairs_file:
            return []
        if self._file_examples is None:
            self._file_examples = self._load_file(self.config.pairs_file)
        return list(self._file_examples)

    def _pair_example(self, first: np.ndarray, second: np.ndarray, label: int) -> Example:
        tok = self.tokenizer
        segments = [first, second]
        ids, types, _ = assemble(segments, self.max_seq_len, tok.cls_token_id, tok.sep_token_id)
        return Example(self.name, self.task_id, ids, types, label)


def validate_pairs_options(task: str, pairs_file: str | None, pairs_mode: str) -> None:
    """Check the `pairs_file`/`pairs_mode` options shared by the tasks reading pair files."""
    if pairs_mode not in PAIRS_MODES:
        raise ValueError(
            f"task {task}: pairs_mode must be one of {PAIRS_MODES}, got {pairs_mode!r}"
        )
    if pairs_file is not None and not isinstance(pairs_file, str | Path):
        raise ValueError(f"task {task}: pairs_file must be a path, got {pairs_file!r}")
    if pairs_mode == "replace" and not pairs_file:
        raise ValueError(f"task {task}: pairs_mode 'replace' needs a pairs_file")
    if pairs_file and not Path(pairs_file).is_file():
        raise FileNotFoundError(f"task {task}: pairs_file {pairs_file} does not exist")
