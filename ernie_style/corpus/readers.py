"""Input readers for `ernie-style prepare`: each source yields `RawDocument`s and counts problems.

Supported inputs (see `open_sources`):

* plain text file: BERT convention, one sentence or paragraph per line and a blank line between
  documents; a document's lines are joined with "\\n" (forced sentence breaks, one paragraph);
* JSONL file (`.jsonl`, `.ndjson`, `.json`): one object per line with a text field and optional
  title and id fields;
* folder of `.txt` files (searched recursively): one document per file, blank-line paragraph
  structure kept, title = file stem;
* a dataset saved with `datasets.save_to_disk` (a folder with `dataset_info.json`/`state.json`,
  or a `DatasetDict` with `dataset_dict.json`);
* a Hugging Face hub dataset name, loaded with `datasets.load_dataset(name, split=...)`.

Ids come from the id field when present, else `<file stem>-<n>` (n = 0-based record number in
the file; folder documents use their file stem). `read_documents` makes ids unique.

Counters (keys of the `stats` Counter): `documents_read`, `skipped_empty`,
`skipped_invalid_json`, `skipped_missing_text`, `empty_files`, `non_utf8_documents` (bytes or
lone surrogates replaced by U+FFFD) and `duplicate_ids_renamed`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import socket
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ernie_style.corpus.annotate import RawDocument

logger = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
_BOM = b"\xef\xbb\xbf"
_SURROGATE = re.compile("[\ud800-\udfff]")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_FILE_LIKE_SUFFIXES = {".txt", ".jsonl", ".ndjson", ".json", ".gz", ".bz2", ".csv", ".arrow"}
_MAX_WARNINGS_PER_SOURCE = 20
_HASH_BLOCK = 1 << 20


@dataclass(frozen=True)
class FieldNames:
    """Names of the text, title and id fields in JSONL records and datasets."""

    text: str = "text"
    title: str = "title"
    id: str = "id"


class Source:
    """One input; `read` yields its documents, `update_fingerprint` hashes its content."""

    kind = "source"

    def __init__(self, path: Path, fields: FieldNames) -> None:
        self.path = path
        self.fields = fields
        self._warnings = 0

    def __str__(self) -> str:
        return f"{self.kind} {self.path}"

    def update_fingerprint(self, hasher: Any) -> None:
        """Feed the source's identity and bytes into a hashlib object."""
        hasher.update(f"{self.kind}\0{self.path.name}\0".encode())
        _hash_file(hasher, self.path)

    def read(self, stats: Counter[str]) -> Iterator[RawDocument]:
        """Yield the source's non-empty documents, counting skipped ones in `stats`."""
        raise NotImplementedError

    def warn(self, where: str, message: str) -> None:
        """Log a warning naming the source position; at most a few per source."""
        self._warnings += 1
        if self._warnings <= _MAX_WARNINGS_PER_SOURCE:
            logger.warning("%s:%s: %s", self.path, where, message)
        if self._warnings == _MAX_WARNINGS_PER_SOURCE:
            logger.warning("%s: further warnings for this input are suppressed", self.path)


class TextFileSource(Source):
    """Plain text, one sentence/paragraph per line, blank lines between documents."""

    kind = "text file"

    def read(self, stats: Counter[str]) -> Iterator[RawDocument]:
        """Yield one document per blank-line separated block of lines."""
        lines: list[str] = []
        replaced = False
        n = 0
        with self.path.open("rb") as stream:
            for i, raw in enumerate(stream):
                line, bad = decode_bytes(raw.removeprefix(_BOM) if i == 0 else raw)
                if line.strip():
                    lines.append(line.rstrip("\r\n"))
                    replaced |= bad
                    continue
                if lines:
                    yield from _emit(stats, f"{self.path.stem}-{n}", "", "\n".join(lines), replaced)
                    n, lines, replaced = n + 1, [], False
        if lines:
            yield from _emit(stats, f"{self.path.stem}-{n}", "", "\n".join(lines), replaced)
            n += 1
        if n == 0:
            stats["empty_files"] += 1


class JsonlSource(Source):
    """JSON lines: one object per line with text, optional title and id fields."""

    kind = "JSONL file"

    def read(self, stats: Counter[str]) -> Iterator[RawDocument]:
        """Yield one document per valid record; bad lines are warned about, counted, skipped."""
        n = 0
        with self.path.open("rb") as stream:
            for lineno, raw in enumerate(stream, start=1):
                line, replaced = decode_bytes(raw.removeprefix(_BOM) if lineno == 1 else raw)
                if not line.strip():
                    continue
                n += 1
                record = self._parse(line, lineno, stats)
                if record is None:
                    continue
                text = record.get(self.fields.text)
                if not isinstance(text, str):
                    what = "missing" if text is None else f"not a string ({type(text).__name__})"
                    self.warn(str(lineno), f"text field {self.fields.text!r} {what}; skipped")
                    stats["documents_read"] += 1
                    stats["skipped_missing_text"] += 1
                    continue
                doc_id = _field_str(record.get(self.fields.id)) or f"{self.path.stem}-{n - 1}"
                title = _field_str(record.get(self.fields.title))
                yield from _emit(stats, doc_id, title, text, replaced)
        if n == 0:
            stats["empty_files"] += 1

    def _parse(self, line: str, lineno: int, stats: Counter[str]) -> dict[str, Any] | None:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            record, problem = None, f"invalid JSON ({error.msg} at column {error.colno})"
        except (ValueError, RecursionError) as error:  # a huge number, too deep nesting
            record, problem = None, f"invalid JSON ({_json_problem(error)})"
        else:
            problem = "" if isinstance(record, dict) else "not a JSON object"
        if problem:
            self.warn(str(lineno), f"{problem}; line skipped")
            stats["documents_read"] += 1
            stats["skipped_invalid_json"] += 1
            return None
        return record


class TextFolderSource(Source):
    """A folder of `.txt` files, one document each, in sorted relative-path order."""

    kind = "text folder"

    def files(self) -> list[Path]:
        """The `.txt` files under the folder, sorted by relative path."""
        return sorted(p for p in self.path.rglob("*.txt") if p.is_file())

    def update_fingerprint(self, hasher: Any) -> None:
        """Hash sorted relative paths and file bytes."""
        _hash_tree(hasher, self.kind, self.path, self.files())

    def read(self, stats: Counter[str]) -> Iterator[RawDocument]:
        """Yield one document per file; title and id are the file stem."""
        for file in self.files():
            text, replaced = decode_bytes(file.read_bytes().removeprefix(_BOM))
            if not text.strip():
                stats["empty_files"] += 1
            yield from _emit(stats, file.stem, file.stem, text, replaced)


class DatasetSource(Source):
    """A `datasets.Dataset` (saved to disk or loaded from the hub)."""

    kind = "saved dataset"

    def __init__(self, path: Path, fields: FieldNames, dataset: Any, name: str) -> None:
        super().__init__(path, fields)
        self.name = name
        columns = dataset.column_names
        if fields.text not in columns:
            raise ValueError(f"{name}: no text column {fields.text!r} (columns: {columns})")
        wanted = [c for c in (fields.text, fields.title, fields.id) if c in columns]
        self.dataset = dataset.select_columns(list(dict.fromkeys(wanted)))

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"

    def update_fingerprint(self, hasher: Any) -> None:
        """Hash every file of the saved dataset folder (arrow files and metadata)."""
        files = sorted(p for p in self.path.rglob("*") if p.is_file())
        _hash_tree(hasher, self.kind, self.path, files)

    def read(self, stats: Counter[str]) -> Iterator[RawDocument]:
        """Yield one document per row; rows without text are warned about and skipped."""
        stem = self.name.rstrip("/").split("/")[-1]
        n = 0
        for batch in self.dataset.iter(batch_size=1000):
            texts = batch[self.fields.text]
            titles = batch.get(self.fields.title, [None] * len(texts))
            ids = batch.get(self.fields.id, [None] * len(texts))
            for text, title, doc_id in zip(texts, titles, ids, strict=True):
                if not isinstance(text, str):
                    self.warn(f"row {n}", f"text field {self.fields.text!r} missing; skipped")
                    stats["documents_read"] += 1
                    stats["skipped_missing_text"] += 1
                else:
                    doc_id = _field_str(doc_id) or f"{stem}-{n}"
                    yield from _emit(stats, doc_id, _field_str(title), text, False)
                n += 1


class HubSource(DatasetSource):
    """A hub dataset, loaded (or taken from the local cache) when the source is opened."""

    kind = "hub dataset"

    def update_fingerprint(self, hasher: Any) -> None:
        """Hash the name and the fingerprint `datasets` computed for the loaded data (private
        but stable: it is what `datasets` itself uses to key its cache).
        """
        hasher.update(f"{self.kind}\0{self.name}\0{self.dataset._fingerprint}\0".encode())


def decode_bytes(data: bytes) -> tuple[str, bool]:
    """UTF-8 decode; undecodable bytes become U+FFFD. Returns (text, whether any was replaced)."""
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace"), True


def open_sources(
    inputs: Sequence[str | Path],
    fields: FieldNames | None = None,
    split: str = "train",
    hub_config: str | None = None,
) -> list[Source]:
    """Resolve input paths/names to sources. Missing paths raise FileNotFoundError; hub datasets
    are loaded here so that an offline or unknown name fails before any work starts.
    """
    fields = fields or FieldNames()
    return [_open_source(str(item), fields, split, hub_config) for item in inputs]


def read_documents(sources: Iterable[Source], stats: Counter[str]) -> Iterator[RawDocument]:
    """Chain the sources' documents, renaming duplicate ids (`<id>-dup<k>`) so all are unique."""
    seen: set[str] = set()
    for source in sources:
        for doc in source.read(stats):
            doc_id = doc.id
            if doc_id in seen:
                k = 1
                while f"{doc_id}-dup{k}" in seen:
                    k += 1
                doc_id = f"{doc_id}-dup{k}"
                stats["duplicate_ids_renamed"] += 1
                doc = RawDocument(id=doc_id, title=doc.title, text=doc.text)
            seen.add(doc_id)
            yield doc


def _open_source(item: str, fields: FieldNames, split: str, hub_config: str | None) -> Source:
    path = Path(item).expanduser()
    if path.is_dir():
        if (
            any((path / name).is_file() for name in ("dataset_info.json", "state.json"))
            or (path / "dataset_dict.json").is_file()
        ):
            return _saved_dataset(path, fields, split)
        return TextFolderSource(path, fields)
    if path.is_file():
        if path.suffix.lower() in JSONL_SUFFIXES:
            return JsonlSource(path, fields)
        return TextFileSource(path, fields)
    if _looks_like_hub_name(item):
        return _hub_dataset(item, fields, split, hub_config)
    raise FileNotFoundError(f"input {item} does not exist")


def _saved_dataset(path: Path, fields: FieldNames, split: str) -> DatasetSource:
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot load saved dataset: {error}") from error
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise ValueError(f"{path}: no split {split!r} (splits: {list(dataset)})")
        dataset = dataset[split]
    return DatasetSource(path, fields, dataset, name=str(path))


def _looks_like_hub_name(item: str) -> bool:
    if not _HUB_NAME.match(item) or Path(item).suffix.lower() in _FILE_LIKE_SUFFIXES:
        return False
    # "data/missing" is a missing local path when "data" exists here, not an org/name pair.
    return "/" not in item or not Path(item.split("/")[0]).exists()


def _hub_dataset(name: str, fields: FieldNames, split: str, config: str | None) -> HubSource:
    import datasets

    hint = "set HF_HUB_OFFLINE=1 to use a cached copy, or pass a local file or folder"
    if not datasets.config.HF_HUB_OFFLINE and not _hub_reachable():
        raise ValueError(f"cannot load hub dataset {name!r}: the hub is unreachable ({hint})")
    try:
        dataset = datasets.load_dataset(name, config, split=split)
    except Exception as error:  # any failure (offline, unknown name, bad split) is a user error
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"cannot load hub dataset {name!r}: {detail} ({hint})") from error
    return HubSource(Path(name), fields, dataset, name=name)


def _hub_reachable(timeout: float = 5.0) -> bool:
    """Quick TCP check of the hub endpoint, so that an offline machine fails at once instead of
    after `datasets`' minute of retries. DNS lookups cannot time out, hence the thread.
    """
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((url.hostname, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1)
    return bool(result and result[0])


def _emit(
    stats: Counter[str], doc_id: str, title: str, text: str, replaced: bool
) -> Iterator[RawDocument]:
    """Count one document; yield it unless it is empty, with lone surrogates (possible from JSON
    escapes, not encodable in Arrow) replaced by U+FFFD.
    """
    stats["documents_read"] += 1
    if not text.strip():
        stats["skipped_empty"] += 1
        return
    original = [doc_id, title, text]
    fixed = [_SURROGATE.sub("\ufffd", value) for value in original]
    if replaced or fixed != original:
        stats["non_utf8_documents"] += 1
    yield RawDocument(id=fixed[0], title=fixed[1], text=fixed[2])


def _json_problem(error: Exception) -> str:
    """A short reason for a JSON line `json.loads` refused beyond syntax errors."""
    if isinstance(error, RecursionError):
        return "nested too deeply"
    return str(error).split(";")[0].split(":")[0] or type(error).__name__


def _field_str(value: Any) -> str:
    return "" if value is None else str(value)


def _hash_file(hasher: Any, path: Path) -> None:
    with path.open("rb") as stream:
        while block := stream.read(_HASH_BLOCK):
            hasher.update(block)


def _hash_tree(hasher: Any, kind: str, root: Path, files: Sequence[Path]) -> None:
    hasher.update(f"{kind}\0{root.name}\0".encode())
    for file in files:
        hasher.update(f"{file.relative_to(root).as_posix()}\0{file.stat().st_size}\0".encode())
        _hash_file(hasher, file)


def fingerprint_sources(sources: Iterable[Source]) -> str:
    """sha256 over all sources' content, in order."""
    hasher = hashlib.sha256()
    for source in sources:
        source.update_fingerprint(hasher)
    return hasher.hexdigest()
