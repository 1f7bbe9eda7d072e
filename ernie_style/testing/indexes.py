"""Index builds for tests: sample documents and a token-table part builder that can be slowed
down (to kill a build midway) and logs which process built each part."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ernie_style.corpus.document import Document
from ernie_style.corpus.token_parts import TokenTableParts
from ernie_style.testing import ROOT

__all__ = ["sample_documents", "save_sample_tokenizer", "slow_token_parts"]


def sample_documents(count: int = 30) -> list[Document]:
    """The first `count` articles of the bundled Wikipedia sample, regex-annotated."""
    from ernie_style.corpus.annotate import RawDocument, RegexAnnotator

    path = ROOT / "data" / "sample_corpus" / "wiki_sample.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:count]]
    annotator = RegexAnnotator()
    return [annotator.annotate_one(RawDocument(row["id"], "", row["text"])) for row in rows]


class _SlowParts(TokenTableParts):
    """Sleeps `delay` seconds per part and appends `begin:PID:FIRST` / `end:PID:FIRST` to the
    file `ERNIE_STYLE_BUILD_LOG` names (if set); PID is the building process (the parent of the
    worker process that builds the part)."""

    def __init__(self, tokenizer: Any, delay: float) -> None:
        super().__init__(tokenizer)
        self.delay = delay

    def build_part(self, documents: Sequence[Document], first: int, last: int, out: Path) -> None:
        """Log, sleep, build."""
        self._log(f"begin:{os.getppid()}:{first}")
        time.sleep(self.delay)
        super().build_part(documents, first, last, out)
        self._log(f"end:{os.getppid()}:{first}")

    @staticmethod
    def _log(event: str) -> None:
        path = os.environ.get("ERNIE_STYLE_BUILD_LOG")
        if path:
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(event + "\n")


def save_sample_tokenizer(path: Path, count: int = 30) -> Path:
    """Train a 1000-token WordPiece tokenizer on the sample documents and save it to `path`
    (processes of one test load it: training again could order tied tokens differently)."""
    from ernie_style.tokenizer import train_wordpiece

    documents = sample_documents(count)
    train_wordpiece([doc.text for doc in documents], vocab_size=1000).save_pretrained(str(path))
    return path


def slow_token_parts(
    delay: float, tokenizer: Path, count: int = 30
) -> tuple[list[Document], TokenTableParts]:
    """(sample documents, a slowed token-table part builder of the tokenizer saved at
    `tokenizer`)."""
    from ernie_style.tokenizer import load_tokenizer

    return sample_documents(count), _SlowParts(load_tokenizer(tokenizer), delay)
