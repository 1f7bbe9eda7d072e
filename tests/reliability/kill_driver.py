"""The driver of the kill trials: what the pytest process runs instead of forking itself.

`run_driver(job, root)` starts `python tests/reliability/kill_driver.py JOB RESULT`, a fresh
process that sets `OMP_NUM_THREADS=1` before torch is imported (so it may fork its runs, see
kill_runs.py), runs the reference and the trials of one command and writes their outcome as
JSON. A job names the "command" and the "root" dir, and:

* pretrain / finetune: "trials", each {"seed", "faults", "window" (default 1)}; pretrain also
  the prepared "corpus" (else one is made);
* prepare: "trials", each {"seed", "fault", "crash_at" (for the rename faults)};
* ingest: "seed", "random_trials" and "crash_points" (default true).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kill_ingest import ingest_trials
from kill_prepare import prepare_reference, prepare_setup, prepare_trial
from kill_runs import CHILD_ENV, fork_launcher, log_tail, preload
from kill_training import TRAINING, training_trial

HERE = Path(__file__).resolve()


def run_driver(job: Mapping[str, Any], root: Path, timeout: float = 900) -> dict[str, Any]:
    """Run `job` in a fresh driver process; returns its JSON result: "trials" (see
    `Trial.as_dict`), "seconds" and, but for ingest, the "reference" run."""
    spec, result = root / "driver-job.json", root / "driver-result.json"
    spec.write_text(json.dumps(job), encoding="utf-8")
    log = root / "driver.log"
    with log.open("wb") as out:
        code = subprocess.run(
            [sys.executable, str(HERE), str(spec), str(result)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=os.environ | CHILD_ENV,
            timeout=timeout,
        ).returncode
    if code != 0:
        raise RuntimeError(f"reliability driver exited {code}:\n{log_tail(log, 4000)}")
    return json.loads(result.read_text(encoding="utf-8"))


def drive(job: Mapping[str, Any]) -> dict[str, Any]:
    """Run the trials of one command in this (fresh, single-threaded) process."""
    root = Path(job["root"])
    command = job["command"]
    preload(command)
    start = time.monotonic()
    out: dict[str, Any] = {}
    if command in TRAINING:
        case = TRAINING[command]
        inputs = Path(job["corpus"]) if "corpus" in job else case.inputs(root)
        reference = case.make_reference(root, inputs, fork_launcher)
        trials = [
            training_trial(
                command, root, inputs, reference, t["seed"], t["faults"], t.get("window", 1.0)
            )
            for t in job["trials"]
        ]
        out["reference"] = reference
    elif command == "prepare":
        source = prepare_setup(root)
        reference = prepare_reference(root, source, fork_launcher)
        trials = [
            prepare_trial(
                root, source, reference, t["seed"], t["fault"], crash_at=t.get("crash_at")
            )
            for t in job["trials"]
        ]
        out["reference"] = reference
    elif command == "ingest":
        trials = ingest_trials(
            root, job["seed"], job["random_trials"], job.get("crash_points", True)
        )
    else:
        raise ValueError(f"unknown command {command!r}")
    out["trials"] = [t.as_dict() for t in trials]
    out["seconds"] = time.monotonic() - start
    return out


if __name__ == "__main__":
    os.environ.update(CHILD_ENV)  # before torch is imported: one thread, safe to fork
    job_file, result_file = Path(sys.argv[1]), Path(sys.argv[2])
    result = drive(json.loads(job_file.read_text(encoding="utf-8")))
    result_file.write_text(json.dumps(result, indent=1), encoding="utf-8")
