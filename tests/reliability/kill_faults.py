"""The SIGKILLs of the kill trials (tests/reliability/kill_*.py, soak.py).

* `kill_at_random`: a seeded random delay, drawn within the measured duration of an
  uninterrupted run (optionally counted from a watched condition, e.g. "training started");
* `kill_during_write`: polls every ~1 ms for a new temp entry (`.tmp-step-*`: a
  `CheckpointWriter` at work; `.best.*`: fine-tuning's best/) and kills at once, so the kill
  lands in the middle of the write;
* `kill_when`: kills as soon as any watched condition holds;
* `call_forked(..., crash_at=(k, "before"|"after"))`: the process SIGKILLs itself just before or
  just after its k-th file rename (every crash-safe write ends in one), for exhaustive crash
  points of fast commands (`ingest`, the renames that install a prepared corpus).
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kill_runs import Launcher, log_tail, run_in_child


@dataclass
class Kill:
    """One injected SIGKILL: whether it hit a running process, when, and what it interrupted."""

    fault: str
    killed: bool = False  # False: the process had already finished when the kill was due
    at: float = 0.0  # seconds after the launch
    detail: str = ""  # e.g. the temp checkpoint directory being written
    mid_write: bool = False  # that directory was still there after the process died


def kill_when(
    launch: Launcher,
    argv: Sequence[str],
    condition: Callable[[], bool],
    *,
    fault: str = "condition",
    log: Path | None = None,
    cwd: Path | None = None,
    poll: float = 0.001,
    timeout: float = 600,
) -> Kill:
    """Start the run and SIGKILL it as soon as `condition()` holds (checked every `poll` s)."""
    start = time.monotonic()
    proc = launch(argv, log, cwd)
    kill = Kill(fault)
    while proc.poll() is None:
        if condition():
            os.kill(proc.pid, signal.SIGKILL)
            break
        if time.monotonic() - start > timeout:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            raise TimeoutError(f"`ernie-style {' '.join(argv)}` ran past {timeout} s")
        time.sleep(poll)
    code = proc.wait()
    kill.at = time.monotonic() - start
    kill.killed = code == -signal.SIGKILL
    if not kill.killed and code != 0:
        raise RuntimeError(f"`ernie-style {' '.join(argv)}` exited {code}:\n{log_tail(log)}")
    return kill


def kill_at_random(
    launch: Launcher,
    argv: Sequence[str],
    seed: int,
    low: float,
    high: float,
    *,
    start_when: Callable[[], bool] | None = None,
    fault: str = "random",
    log: Path | None = None,
    cwd: Path | None = None,
    timeout: float = 600,
) -> Kill:
    """SIGKILL the run after a delay drawn (seeded) from [low, high] seconds, counted from the
    launch, or from the moment `start_when()` first holds."""
    delay = random.Random(seed).uniform(low, high)
    started: list[float] = []

    def due() -> bool:
        now = time.monotonic()
        if not started:
            if start_when is not None and not start_when():
                return False
            started.append(now)
        return now - started[0] >= delay

    kill = kill_when(launch, argv, due, fault=fault, log=log, cwd=cwd, poll=0.002, timeout=timeout)
    kill.detail = f"delay {delay:.3f} s" + (" after the watched condition" if start_when else "")
    return kill


def file_grew(path: Path) -> Callable[[], bool]:
    """A condition: `path` is longer than now (e.g. train_loss.csv: a training step ended)."""
    size = path.stat().st_size if path.exists() else 0
    return lambda: path.exists() and path.stat().st_size > size


def new_entry(directory: Path, prefix: str, skip: int = 0) -> tuple[Callable[[], bool], list[str]]:
    """A condition: the (skip+1)-th entry named `prefix*` that was not in `directory` before
    has appeared; the list it returns collects the names seen (the last one is the hit)."""
    before = {p.name for p in directory.glob(prefix + "*")} if directory.is_dir() else set()
    seen: list[str] = []

    def condition() -> bool:
        try:
            names = [e.name for e in os.scandir(directory) if e.name.startswith(prefix)]
        except FileNotFoundError:
            return False
        for name in names:
            if name not in before and name not in seen:
                seen.append(name)
        return len(seen) > skip

    return condition, seen


def kill_during_write(
    launch: Launcher,
    argv: Sequence[str],
    directory: Path,
    prefix: str,
    *,
    skip: int = 0,
    fault: str = "write",
    log: Path | None = None,
    cwd: Path | None = None,
    timeout: float = 600,
) -> Kill:
    """SIGKILL the run the moment (polling every ~1 ms) a new temp entry `directory/prefix*`
    appears (the (skip+1)-th one); `mid_write` tells whether it was still there afterwards,
    i.e. the kill landed before the writer's final rename."""
    condition, seen = new_entry(directory, prefix, skip)
    kill = kill_when(launch, argv, condition, fault=fault, log=log, cwd=cwd, timeout=timeout)
    if seen and len(seen) > skip:
        kill.detail = seen[skip]
        kill.mid_write = kill.killed and (directory / seen[skip]).exists()
    return kill


def _patch_renames(crash_at: tuple[int, str] | None, done: Callable[[], None]) -> None:
    """Wrap os.replace/os.rename: call `done()` after each rename, and SIGKILL this process
    just before or just after the k-th one (`crash_at = (k, "before"|"after")`)."""
    counter = [0]

    def wrap(real: Callable[..., Any]) -> Callable[..., Any]:
        def renamed(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
            counter[0] += 1
            hit = crash_at is not None and counter[0] == crash_at[0]
            if hit and crash_at[1] == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            result = real(src, dst, *args, **kwargs)
            done()
            if hit and crash_at[1] == "after":
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        return renamed

    os.replace = wrap(os.replace)  # type: ignore[assignment]
    os.rename = wrap(os.rename)  # type: ignore[assignment]


def call_forked(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    log: Path | None = None,
    delay: float | None = None,
    crash_at: tuple[int, str] | None = None,
    timeout: float = 120,
) -> tuple[Kill, int]:
    """Run `ernie-style ARGV` in a forked child that is SIGKILLed `delay` s after the start, or
    kills itself at its `crash_at = (k, "before"|"after")` rename. Returns the kill and the
    number of renames the child made (all of them when it was not killed)."""
    read_end, write_end = os.pipe()
    start = time.monotonic()

    def count_renames() -> None:  # in the child: one byte per rename reaches the parent
        os.close(read_end)
        _patch_renames(crash_at, lambda: os.write(write_end, b"."))

    pid = run_in_child(argv, log, cwd, before=count_renames)
    os.close(write_end)
    kill = Kill("rename" if crash_at else "random")
    if crash_at is not None:
        kill.detail = f"{crash_at[1]} rename {crash_at[0]}"
    status = None
    if delay is not None:
        kill.detail = f"delay {delay * 1000:.1f} ms"
        while time.monotonic() - start < delay:
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(raw)
                break
            time.sleep(0.0005)
        else:
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while status is None:
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(raw)
        elif time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
        else:
            time.sleep(0.001)
    renames = 0
    while chunk := os.read(read_end, 4096):
        renames += len(chunk)
    os.close(read_end)
    kill.at = time.monotonic() - start
    kill.killed = status == -signal.SIGKILL
    if not kill.killed and status != 0:
        raise RuntimeError(f"`ernie-style {' '.join(argv)}` exited {status}:\n{log_tail(log)}")
    return kill, renames
