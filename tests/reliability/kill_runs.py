"""Runs of `ernie-style` commands for the kill trials (tests/reliability/kill_*.py, soak.py).

A run is launched by a *launcher*: `fork_launcher` forks this process (which has imported the
heavy modules once, see `preload`) and calls `ernie_style.cli.main(argv)` in the child, so a run
starts in well under a second instead of ~6 s of imports; `subprocess_launcher` starts a fresh
`python -m ernie_style`. Either way a kill is a real SIGKILL of a separate process. Forking is
only safe from a process that has not started threads (torch's OpenMP pool): the pytest process
therefore never forks; it runs the trials in a driver subprocess (`kill_driver.run_driver`),
which sets `OMP_NUM_THREADS=1` before importing torch.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from ernie_style.testing import CHILD_ENV as BASE_ENV

#: Environment of every run: offline, quiet, one thread (deterministic and fork-safe).
CHILD_ENV = BASE_ENV | {"HF_DATASETS_OFFLINE": "1", "MKL_NUM_THREADS": "1"}


class Proc(Protocol):
    """The part of `subprocess.Popen` the kill helpers use."""

    pid: int

    def poll(self) -> int | None:
        """The exit code (negative: killed by that signal), or None while running."""

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit code."""


Launcher = Callable[[Sequence[str], Path | None, Path | None], Proc]


def run_in_child(
    argv: Sequence[str],
    log: Path | None = None,
    cwd: Path | None = None,
    before: Callable[[], None] | None = None,
) -> int:
    """Fork; in the child, send output to `log`, change to `cwd`, call `before()`, run
    `ernie_style.cli.main(argv)` and exit with its code (never returns there). Returns the
    child's pid to the parent."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        fd = os.open(log or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        if cwd is not None:
            os.chdir(cwd)
        if before is not None:
            before()
        from ernie_style.cli import main

        code = main(list(argv))
    except SystemExit as error:
        code = error.code if isinstance(error.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class ForkedRun:
    """`ernie-style ARGV` in a forked copy of this process (see `run_in_child`)."""

    def __init__(self, argv: Sequence[str], log: Path | None = None, cwd: Path | None = None):
        self.pid = run_in_child(argv, log, cwd)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """The exit code (negative: the signal that killed it), or None while running."""
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit code; TimeoutError (after killing it) past `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                raise TimeoutError(f"pid {self.pid} still running after {timeout} s")
            time.sleep(0.005)
        return int(self.returncode or 0)


def fork_launcher(argv: Sequence[str], log: Path | None = None, cwd: Path | None = None) -> Proc:
    """Start a run in a forked child (call `preload` first, and never from a threaded process)."""
    return ForkedRun(argv, log, cwd)


def subprocess_launcher(
    argv: Sequence[str], log: Path | None = None, cwd: Path | None = None
) -> Proc:
    """Start a run as a fresh `python -m ernie_style` process."""
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "ernie_style", *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=os.environ | CHILD_ENV,
        )
    finally:
        if log is not None:
            out.close()


#: Modules each command imports while it runs (imported once by `preload` before forking).
PRELOAD = {
    "pretrain": [
        "ernie_style.pretrain.trainer",
        "ernie_style.pretrain.state",
        "ernie_style.run_lock",
    ],
    "finetune": [
        "ernie_style.finetune.trainer",
        "ernie_style.finetune.state",
        "ernie_style.finetune.export",
        "ernie_style.finetune.plots",
        "matplotlib.pyplot",
    ],
    "prepare": ["ernie_style.corpus.prepare", "ernie_style.tokenizer", "ernie_style.run_lock"],
    "ingest": ["ernie_style.active_learning.loop", "ernie_style.finetune.loading"],
}


def preload(*commands: str) -> None:
    """Set the run environment and import what `commands` need, so forked runs start fast."""
    os.environ.update(CHILD_ENV)
    warnings.simplefilter("ignore")
    from ernie_style.cli import build_parser

    build_parser()
    for command in commands:
        for name in PRELOAD.get(command, []):
            with contextlib.suppress(ImportError):
                importlib.import_module(name)


def log_tail(log: Path | None, chars: int = 1500) -> str:
    """The end of a run's log (for failure messages)."""
    if log is None or not log.is_file():
        return ""
    return log.read_text(encoding="utf-8", errors="replace")[-chars:]


def run_to_end(
    launch: Launcher,
    argv: Sequence[str],
    log: Path | None = None,
    cwd: Path | None = None,
    timeout: float = 600,
) -> float:
    """Run to completion; returns its duration; RuntimeError (with the log's tail) unless it
    exits 0."""
    start = time.monotonic()
    proc = launch(argv, log, cwd)
    code = proc.wait(timeout=timeout)
    if code != 0:
        raise RuntimeError(f"`ernie-style {' '.join(argv)}` exited {code}:\n{log_tail(log)}")
    return time.monotonic() - start
