"""A prepared corpus on disk: layout, loading, fingerprints and crash-safe installation.

Layout of a `prepare` output directory DIR:

    DIR/documents/            `datasets.Dataset` with `DOCUMENT_FEATURES` (save_to_disk)
    DIR/prepare_summary.json  counts of documents read, kept and skipped
    DIR/fingerprint.json      fingerprint of inputs + settings; written last
    DIR/tokenizer/            WordPiece tokenizer, with --train-tokenizer

Outputs are built in a temporary sibling directory `.DIR.prepare-tmp-<pid>-<token>` (same
filesystem) and renamed into place at the end, so DIR is always absent or complete. Temporary
directories of processes that no longer run are removed by the next `prepare`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import datasets

from ernie_style.corpus.document import DOCUMENT_FEATURES
from ernie_style.fileio import replace_dir, sibling, sweep_stale_dirs

FORMAT = "ernie-style-prepared-corpus"
#: Bump when the annotation or output layout changes in a way the code hash would not show.
FORMAT_VERSION = 1
DOCUMENTS_DIR = "documents"
SUMMARY_FILE = "prepare_summary.json"
FINGERPRINT_FILE = "fingerprint.json"
TOKENIZER_DIR = "tokenizer"
#: Modules whose code decides what `prepare` writes; their bytes are part of the fingerprint.
_CODE_MODULES = (
    "annotate.py",
    "chinese.py",
    "document.py",
    "language.py",
    "readers.py",
    "spacy_annotator.py",
    "prepare.py",
)
_TEMP_TAG, _OLD_TAG = "prepare-tmp", "prepare-old"


def load_corpus(path: str | Path) -> datasets.Dataset:
    """Load a prepared corpus from DIR or DIR/documents, checking its features."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"prepared corpus {path} does not exist")
    documents = path / DOCUMENTS_DIR if (path / DOCUMENTS_DIR).is_dir() else path
    if not (documents / "state.json").is_file() or not (documents / "dataset_info.json").is_file():
        raise ValueError(
            f"{path} is not a prepared corpus (no {DOCUMENTS_DIR}/ dataset from `ernie-style "
            "prepare`)"
        )
    try:
        dataset = datasets.load_from_disk(str(documents))
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is not a readable prepared corpus: {error}") from error
    if not isinstance(dataset, datasets.Dataset):
        raise ValueError(f"{path} holds a DatasetDict, not a prepared corpus")
    if dataset.features != DOCUMENT_FEATURES:
        expected, found = set(DOCUMENT_FEATURES), set(dataset.features)
        detail = f"missing {sorted(expected - found)}, extra {sorted(found - expected)}"
        raise ValueError(f"{path}: features differ from the document schema ({detail})")
    return dataset


def compute_fingerprint(sources: Any, settings: dict[str, Any]) -> str:
    """sha256 over format, schema, code, settings and every source's bytes."""
    hasher = hashlib.sha256()
    header = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "schema": DOCUMENT_FEATURES.to_dict(),
        "code": code_hash(),
        "settings": settings,
    }
    hasher.update(json.dumps(header, sort_keys=True, default=str).encode())
    for source in sources:
        source.update_fingerprint(hasher)
    return hasher.hexdigest()


def code_hash() -> str:
    """sha256 of the modules that decide the output, so a code change invalidates caches."""
    hasher = hashlib.sha256()
    package = Path(__file__).parent
    for name in _CODE_MODULES:
        hasher.update(name.encode() + b"\0" + (package / name).read_bytes())
    return hasher.hexdigest()


def read_fingerprint(output: Path) -> dict[str, Any] | None:
    """The fingerprint record of a complete prepare output, or None if `output` is not one."""
    try:
        record = json.loads((output / FINGERPRINT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    complete = (output / DOCUMENTS_DIR / "state.json").is_file() and (
        output / SUMMARY_FILE
    ).is_file()
    if not isinstance(record, dict) or record.get("format") != FORMAT or not complete:
        return None
    return record


def load_summary(output: Path) -> dict[str, Any]:
    """The `prepare_summary.json` of a prepare output."""
    return json.loads((output / SUMMARY_FILE).read_text(encoding="utf-8"))


def check_output_dir(output: Path) -> None:
    """Refuse an output path that exists and is neither empty nor a prepare output."""
    if not output.exists():
        if output.parent.exists() and not output.parent.is_dir():
            raise ValueError(f"parent of output {output} is not a directory")
        output.parent.mkdir(parents=True, exist_ok=True)
        return
    if not output.is_dir():
        raise ValueError(f"output {output} exists and is not a directory")
    if (output / FINGERPRINT_FILE).is_file() or not any(output.iterdir()):
        return
    raise ValueError(
        f"output {output} exists, is not empty and is not a prepare output; refusing to "
        "overwrite it (choose another --output or remove it yourself)"
    )


def new_temp_dir(output: Path) -> Path:
    """A fresh temporary directory next to `output`, named after this process."""
    path = sibling(output, _TEMP_TAG)
    path.mkdir()
    return path


def remove_stale_temp_dirs(output: Path) -> int:
    """Delete temporary/old directories left by dead `prepare` runs; returns how many."""
    return sweep_stale_dirs(output, _TEMP_TAG, _OLD_TAG, restore=False)


def install(temp: Path, output: Path) -> None:
    """Move a finished temporary directory to `output`, replacing a previous prepare output.

    Each rename is atomic: a crash leaves `output` either the old complete version or absent
    (the old copy then sits in a `.prepare-old-` directory that the next run removes).
    """
    if output.exists() and not any(output.iterdir()):
        output.rmdir()
    # Two renames (old aside, new in), as prepare has always done; its fault-injection tests
    # interrupt exactly these renames.
    replace_dir(temp, output, old_tag=_OLD_TAG, exchange=False)


def write_json(path: Path, record: dict[str, Any]) -> None:
    """Write a JSON file and flush it to disk (it may be the completion marker)."""
    with path.open("w", encoding="utf-8") as stream:
        json.dump(record, stream, indent=2, sort_keys=True)
        stream.write("\n")
        stream.flush()
        os.fsync(stream.fileno())
