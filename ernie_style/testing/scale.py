"""Corpora at several multiples of the bundled sample, for scale benchmarks and experiments:
the sample's articles repeated with distinct ids (`<id>-r<k>`), prepared without annotation,
and the peak memory of a command measured in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from ernie_style.testing import ROOT, child_env

__all__ = ["SAMPLE", "measured_run", "prepare_scaled", "write_scaled_jsonl"]

SAMPLE = ROOT / "data" / "sample_corpus" / "wiki_sample.jsonl"
#: Runs a command and prints its wall seconds and the peak RSS (MB) of its process tree.
_MEASURE = """
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run(sys.argv[1:]).returncode
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(f"MEASURED {code} {seconds:.3f} {peak:.1f}", flush=True)
"""


def write_scaled_jsonl(path: Path, times: int, sources: list[Path] | None = None) -> int:
    """Write the articles of `sources` (default: the sample) `times` over with distinct ids;
    returns the bytes of text written."""
    rows = []
    for source in sources or [SAMPLE]:
        rows += [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines()]
    written = 0
    with path.open("w", encoding="utf-8") as out:
        for k in range(times):
            for row in rows:
                out.write(json.dumps(row | {"id": f"{row['id']}-r{k}"}) + "\n")
                written += len(row["text"].encode("utf-8"))
    return written


def measured_run(command: list[str], log: Path | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB of the command's process tree); the command's output
    goes to `log` (or is dropped). A failing command raises with its log's tail."""
    handle = log.open("w") if log else subprocess.DEVNULL
    try:
        result = subprocess.run(
            [sys.executable, "-c", _MEASURE, *command],
            stdout=subprocess.PIPE,
            stderr=handle,
            text=True,
            env=child_env(),
            check=False,
        )
    finally:
        if log:
            handle.close()
    line = [x for x in result.stdout.splitlines() if x.startswith("MEASURED ")][-1]
    code, seconds, peak = line.split()[1:]
    if int(code) != 0:
        tail = log.read_text()[-2000:] if log else ""
        raise RuntimeError(f"{' '.join(command)} failed ({code}): {tail}")
    return float(seconds), float(peak)


def prepare_scaled(root: Path, times: int, annotator: str = "none") -> tuple[Path, float]:
    """A prepared corpus of `times` x the sample under `root` (reused if there); returns it and
    the seconds `prepare` took (0 when reused). No tokenizer and no index are built."""
    corpus = root / f"x{times}"
    if (corpus / "fingerprint.json").is_file():
        return corpus, 0.0
    source = root / f"x{times}.jsonl"
    write_scaled_jsonl(source, times)
    start = time.perf_counter()
    command = [sys.executable, "-m", "ernie_style", "prepare", "--input", str(source)]
    command += ["--output", str(corpus), "--annotator", annotator, "--no-index", "--no-progress"]
    subprocess.run(command, check=True, capture_output=True, env=child_env())
    seconds = time.perf_counter() - start
    source.unlink()
    return corpus, seconds
