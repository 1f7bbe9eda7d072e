"""Coverage-guided fuzzing (atheris, optional: `pip install atheris`) of the input readers.

Not collected by pytest (the file name does not start with `test_`). One target per run:

    .venv/bin/python tests/reliability/fuzz_atheris.py corpus -runs=20000
    .venv/bin/python tests/reliability/fuzz_atheris.py config -runs=20000
    .venv/bin/python tests/reliability/fuzz_atheris.py batch -runs=20000

Any libFuzzer flag works after the target (`-max_total_time=60`, `-max_len=4096`, a corpus
directory). The property is the one of `test_fuzz.py`: the reader succeeds or raises its
documented clear error (a `ValueError`); anything else is a crash, and atheris saves the input
as `crash-*` in the working directory.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections import Counter
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["ernie_style"]):
    from ernie_style.active_learning.loop import read_batch
    from ernie_style.active_learning.pool import TaskSpec
    from ernie_style.config import load_config
    from ernie_style.corpus.readers import open_sources, read_documents
    from ernie_style.finetune.config import FinetuneConfig
    from ernie_style.finetune.readers import DataError
    from ernie_style.pretrain.config import PretrainConfig

SPECS = {
    "ner": TaskSpec("ner", "token_classification", ["O", "B-X", "I-X"], ["words"], "tags"),
    "sent": TaskSpec("sent", "classification", ["pos", "neg"], ["text"], "label"),
    "score": TaskSpec("score", "regression", None, ["text"], "label"),
    "rank": TaskSpec("rank", "ranking", None, ["query", "candidates"], "label"),
}
WORK = Path(tempfile.mkdtemp(prefix="ernie-style-atheris-"))


def fuzz_corpus(data: bytes) -> None:
    """JSONL and text corpus readers: bad lines are skipped, never raised."""
    for name in ("input.jsonl", "input.txt"):
        path = WORK / name
        path.write_bytes(data)
        list(read_documents(open_sources([path]), Counter()))


def fuzz_config(data: bytes) -> None:
    """The config loader: a YAML file (and the first line as a `key=value` override)."""
    path = WORK / "config.yaml"
    path.write_bytes(data)
    override = data.split(b"\n", 1)[0].decode("utf-8", "replace")
    for cls in (PretrainConfig, FinetuneConfig):
        for overrides in ([], [override]):
            with contextlib.suppress(ValueError):
                load_config(cls, path, overrides)


def fuzz_batch(data: bytes) -> None:
    """The annotation-batch reader of `ingest`."""
    path = WORK / "batch.jsonl"
    path.write_bytes(data)
    with contextlib.suppress(DataError):
        read_batch(path, SPECS)


TARGETS = {"corpus": fuzz_corpus, "config": fuzz_config, "batch": fuzz_batch}
#: Valid inputs the fuzzer starts from (used when no corpus directory is given).
SEEDS = {
    "corpus": [b'{"id": "d1", "title": "T", "text": "One line.\\nTwo."}\n', b"A line.\n\nNext.\n"],
    "config": [
        b"seed: 3\nbatch_size: 8\ntasks:\n  knowledge_masking: {budget: 4}\n",
        b"encoder: x\nepochs: 2\ntasks:\n- {name: a, type: classification, labels: [x, y]}\n",
        b"seed=5\n",
    ],
    "batch": [
        b'{"id": "a", "words": ["the", "cat"], "text": "t", "query": "q", "candidates": '
        b'["x", "y"], "labels": {"ner": ["O", "B-X"], "sent": "pos", "score": 1.5, "rank": 1}}\n'
    ],
}


def main() -> None:
    """`fuzz_atheris.py TARGET [libFuzzer flags]`."""
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [-runs=N] [libFuzzer flags]")
    name = sys.argv.pop(1)
    target = TARGETS[name]
    if not any(not arg.startswith("-") for arg in sys.argv[1:]):
        seeds = WORK / f"seeds-{name}"
        seeds.mkdir()
        for i, seed in enumerate(SEEDS[name]):
            (seeds / f"seed{i}").write_bytes(seed)
        sys.argv.append(str(seeds))
    import logging

    logging.disable(logging.WARNING)  # the corpus readers warn about every bad line
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
