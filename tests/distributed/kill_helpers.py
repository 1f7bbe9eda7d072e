"""Helpers for the distributed kill-and-resume tests: SIGKILL a launcher and its workers after
a given checkpoint, read train_loss.csv per invocation, compare nested states bit for bit."""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import torch

from ernie_style.testing.pretrain import child_env


def kill_tree(pid: int) -> list[psutil.Process]:
    """SIGKILL a process and all its descendants, the parent first (so that torch's elastic
    agent cannot restart its workers; they run in sessions of their own, so a process-group
    kill would miss them); returns the descendants it killed."""
    parent = psutil.Process(pid)
    children = parent.children(recursive=True)
    os.kill(pid, signal.SIGKILL)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.send_signal(signal.SIGKILL)
    return children


def run_and_kill_after(cmd: list[str], checkpoint: Path, log: Path, workers: int = 2) -> None:
    """Start `cmd` and SIGKILL it (launcher and its `workers` worker processes) as soon as
    `checkpoint` has been written."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=child_env())
    deadline = time.monotonic() + 300
    children: list[psutil.Process] = []
    try:
        while not checkpoint.is_dir():
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.002)
    finally:
        children = kill_tree(proc.pid)
        proc.wait()
        psutil.wait_procs(children, timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert len(children) >= workers
    assert not any(child.is_running() for child in children)


def losses_by_run(path: Path) -> list[dict[tuple[int, str], str]]:
    """The (step, task) -> loss text of each invocation appended to train_loss.csv (a new one
    starts where the step goes back); texts are full-precision reprs, compared exactly."""
    runs: list[dict[tuple[int, str], str]] = [{}]
    last = -1
    with path.open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            step = int(row["step"])
            if step < last:
                runs.append({})
            runs[-1][(step, row["task"])] = row["loss"]
            last = step
    return runs


def assert_equal_nested(got: object, want: object, path: str = "") -> None:
    """Dicts/lists of tensors and plain values, equal bit for bit."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), path
        for key in want:
            assert_equal_nested(got[key], want[key], f"{path}/{key}")
    elif isinstance(want, list | tuple):
        assert len(got) == len(want), path
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            assert_equal_nested(a, b, f"{path}[{i}]")
    elif isinstance(want, torch.Tensor):
        assert torch.equal(got, want), path
    else:
        assert got == want, path


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    """Run to completion with the test environment; fail with the stderr tail."""
    result = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result
