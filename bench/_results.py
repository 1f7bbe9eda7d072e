"""Machine-readable benchmark results, collected by `bench/run_all.py` (`make bench`).

Each benchmark prints its figures for people and also calls `record(...)` for its headline
ratios; when `ERNIE_BENCH_RESULTS` names a file, every call appends one JSON line to it.
Run on its own, a benchmark only prints.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

RESULTS_ENV = "ERNIE_BENCH_RESULTS"


def record(metric: str, value: float, target: str, met: bool | None, detail: str = "") -> None:
    """Append one headline figure (`value` against `target`, e.g. ">= 2.0") for the report."""
    path = os.environ.get(RESULTS_ENV)
    if not path:
        return
    line = {"metric": metric, "value": value, "target": target, "met": met, "detail": detail}
    with Path(path).open("a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
