"""Fault injection for tests/reliability/ and the soak (tests/reliability/soak.py).

A *trial* runs an `ernie-style` command, SIGKILLs it at some moment, runs it again (`--resume
auto` for the training commands) until it finishes, and checks the outcome against an
uninterrupted reference run. The kills:

* `kill_at_random`: a seeded random delay, drawn within the measured duration of an
  uninterrupted run (optionally counted from a watched condition, e.g. "training started");
* `kill_during_checkpoint_write`: polls every ~1 ms for a new `.tmp-step-*` directory (a
  `CheckpointWriter` at work) and kills at once, so the kill lands in the middle of the write;
* `kill_when`: kills as soon as any watched condition holds;
* `call_forked(..., crash_at=(k, "before"|"after"))`: the process SIGKILLs itself just before or
  just after its k-th file rename (every crash-safe write ends in one), for exhaustive crash
  points of fast commands (`ingest`).

Runs are launched by a *launcher*: `fork_launcher` forks this process (which has imported the
heavy modules once, see `preload`) and calls `ernie_style.cli.main(argv)` in the child, so a run
starts in well under a second instead of ~6 s of imports; `subprocess_launcher` starts a fresh
`python -m ernie_style`. Either way the kill is a real SIGKILL of a separate process. Forking is
only safe from a process that has not started threads (torch's OpenMP pool): the pytest process
therefore never forks; it runs the trials in a driver subprocess (`run_driver`, the `__main__`
of this module), which sets `OMP_NUM_THREADS=1` before importing torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
HERE = Path(__file__).resolve()

#: Environment of every run: offline, quiet, one thread (deterministic and fork-safe).
CHILD_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "PYTHONWARNINGS": "ignore",
    "TORCH_EXTENSIONS_DIR": str(ROOT / ".cache" / "torch_extensions"),
}


# ---- processes ------------------------------------------------------------------------------
class Proc(Protocol):
    """The part of `subprocess.Popen` the kill helpers use."""

    pid: int

    def poll(self) -> int | None:
        """The exit code (negative: killed by that signal), or None while running."""

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit code."""


Launcher = Callable[[Sequence[str], Path | None, Path | None], Proc]


class ForkedRun:
    """`ernie-style ARGV` in a forked copy of this process: the child runs
    `ernie_style.cli.main(argv)` (in `cwd` if given, output to `log`) and exits with its code."""

    def __init__(self, argv: Sequence[str], log: Path | None = None, cwd: Path | None = None):
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 1
            try:
                fd = os.open(log or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                if cwd is not None:
                    os.chdir(cwd)
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
        self.pid = pid
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


# ---- kills ----------------------------------------------------------------------------------
@dataclass
class Kill:
    """One injected SIGKILL: whether it hit a running process, when, and what it interrupted."""

    fault: str
    killed: bool = False  # False: the process had already finished when the kill was due
    at: float = 0.0  # seconds after the launch
    detail: str = ""  # e.g. the temp checkpoint directory being written
    mid_write: bool = False  # that directory was still there after the process died


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


def kill_during_checkpoint_write(
    launch: Launcher,
    argv: Sequence[str],
    checkpoints_dir: Path,
    *,
    skip: int = 0,
    log: Path | None = None,
    timeout: float = 600,
) -> Kill:
    """SIGKILL the run in the middle of writing its (skip+1)-th checkpoint (a new
    `.tmp-step-*` directory under `checkpoints_dir`)."""
    return kill_during_write(
        launch, argv, checkpoints_dir, ".tmp-step-", skip=skip, fault="checkpoint-write", log=log,
        timeout=timeout,
    )  # fmt: skip


# ---- in-process crash points (fork) ---------------------------------------------------------
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
    sys.stdout.flush()
    sys.stderr.flush()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        code = 1
        try:
            fd = os.open(log or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            if cwd is not None:
                os.chdir(cwd)
            # one byte per rename reaches the parent
            _patch_renames(crash_at, lambda: os.write(write_end, b"."))
            from ernie_style.cli import main

            code = main(list(argv))
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
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


# ---- trials ---------------------------------------------------------------------------------
@dataclass
class Trial:
    """The outcome of one trial: the kills, whether the command then finished with every check
    holding (`survived`), and how many rows/tensors ended up lost, duplicated or different
    from the uninterrupted reference (`data_lost`)."""

    command: str
    fault: str
    seed: int
    kills: list[Kill] = field(default_factory=list)
    survived: bool = False
    data_lost: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Trial:
        """The inverse of `as_dict`."""
        kills = [Kill(**k) for k in data.get("kills", [])]
        return cls(**{**data, "kills": kills})


def _finish(trial: Trial, started: float) -> Trial:
    trial.survived = not trial.problems
    trial.seconds = round(time.monotonic() - started, 2)
    return trial


def _tensors_differ(got: Path, expected: Path) -> list[str]:
    """Names of tensors missing from, or different in, `got` (vs `expected`)."""
    import torch
    from safetensors.torch import load_file

    a, b = load_file(str(got)), load_file(str(expected))
    return sorted(k for k in b if k not in a or not torch.equal(a[k], b[k])) + sorted(
        k for k in a if k not in b
    )


def _stale(directory: Path, *patterns: str) -> list[str]:
    return sorted(p.name for pattern in patterns for p in directory.glob(pattern))


# ---- pretrain ---------------------------------------------------------------------------------
#: A 14-step run over 3 stages; a checkpoint every 3 steps and at stage ends; 3 kept.
PRETRAIN_TASKS = {
    "knowledge_masking": {"budget": 6},
    "capitalization": {"budget": 4},
    "sentence_distance": {"budget": 4},
}
PRETRAIN_STEPS = 14


def pretrain_config(path: Path, corpus: Path, output: Path) -> Path:
    """The tiny pretraining config every pretrain trial runs."""
    from ernie_style.testing.pretrain import write_config

    return write_config(
        path, corpus, output, tasks=PRETRAIN_TASKS, checkpoint_every=3, keep_checkpoints=3,
        eval_every=100, log_every=2,
    )  # fmt: skip


def timed_reference(
    command: str, config: Path, run: Path, log: Path, launch: Launcher
) -> dict[str, Any]:
    """Run `command --config CONFIG` uninterrupted; returns its run dir and measured durations
    (total, and from its first training step, when train_loss.csv appears, to the end)."""
    csv = run / "train_loss.csv"
    start = time.monotonic()
    proc = launch([command, "--config", str(config)], log, None)
    first = None
    while proc.poll() is None:
        if first is None and csv.exists():
            first = time.monotonic() - start
        time.sleep(0.005)
    if proc.wait() != 0:
        raise RuntimeError(f"reference {command} failed:\n{log_tail(log)}")
    total = time.monotonic() - start
    first = total if first is None else first
    return {"run": str(run), "seconds": total, "train_seconds": max(total - first, 0.05)}


def pretrain_reference(root: Path, corpus: Path, launch: Launcher) -> dict[str, Any]:
    """The tiny pretraining config, uninterrupted (see `timed_reference`)."""
    config = pretrain_config(root / "reference.yaml", corpus, root / "reference")
    return timed_reference("pretrain", config, root / "reference", root / "reference.log", launch)


def check_checkpoints_after_kill(checkpoints: Path) -> list[str]:
    """The newest checkpoint directory (if any) is complete, and `--resume auto` picks it."""
    from ernie_style.train.checkpoint import find_resumable, list_checkpoints, verify

    found = list_checkpoints(checkpoints)
    if not found:
        return []
    problems = []
    reason = verify(found[0])
    if reason is not None:
        problems.append(f"newest checkpoint {found[0].name} is incomplete: {reason}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        chosen = find_resumable(checkpoints)
    if chosen != found[0]:
        problems.append(f"--resume auto would pick {chosen}, not the newest {found[0].name}")
    return problems


def pretrain_trial(
    root: Path,
    corpus: Path,
    reference: Mapping[str, Any],
    seed: int,
    faults: Sequence[str],
    window: float = 1.0,
    launch: Launcher = fork_launcher,
) -> Trial:
    """Kill a tiny pretraining run once per entry of `faults` ("random": a random moment of
    training; "anytime": a random moment since the launch; "checkpoint": in the middle of a
    checkpoint write), each time resuming with `--resume auto`; then resume to the end and
    compare the final checkpoint with the reference run's. Random delays are drawn within
    `window` times the reference run's measured duration."""
    from ernie_style.train.checkpoint import list_checkpoints, step_dir_name, verify

    started = time.monotonic()
    trial = Trial("pretrain", "+".join(faults), seed)
    rng = random.Random(seed)
    work = root / f"pretrain-{seed}"
    config = pretrain_config(root / f"pretrain-{seed}.yaml", corpus, work)
    checkpoints = work / "checkpoints"
    log = root / f"pretrain-{seed}.log"
    for number, fault in enumerate(faults):
        argv = ["pretrain", "--config", str(config)] + (["--resume", "auto"] if number else [])
        if fault == "checkpoint":
            # the first run writes several checkpoints: kill in a random one of the first 3;
            # a resumed run may have only one left: kill in its first
            skip = rng.randrange(3) if number == 0 else 0
            kill = kill_during_checkpoint_write(launch, argv, checkpoints, skip=skip, log=log)
            if kill.killed and not kill.mid_write:
                trial.problems.append(f"kill {number + 1} missed the checkpoint write ({kill})")
        elif fault == "random":
            kill = kill_at_random(
                launch, argv, rng.randrange(1 << 30), 0, window * reference["train_seconds"],
                start_when=file_grew(work / "train_loss.csv"), log=log,
            )  # fmt: skip
        elif fault == "anytime":
            kill = kill_at_random(
                launch, argv, rng.randrange(1 << 30), 0, window * reference["seconds"],
                fault="anytime", log=log,
            )  # fmt: skip
        else:
            raise ValueError(f"unknown pretrain fault {fault!r}")
        trial.kills.append(kill)
        trial.problems += check_checkpoints_after_kill(checkpoints)
    try:
        run_to_end(launch, ["pretrain", "--config", str(config), "--resume", "auto"], log)
    except RuntimeError as error:
        trial.problems.append(f"the resumed run failed: {error}")
        trial.data_lost = 1
        return _finish(trial, started)
    newest = list_checkpoints(checkpoints)
    expected = Path(reference["run"]) / "checkpoints" / step_dir_name(PRETRAIN_STEPS)
    if not newest or newest[0].name != expected.name:
        trial.problems.append(f"newest checkpoint {newest[:1]} is not {expected.name}")
        trial.data_lost = 1
        return _finish(trial, started)
    reason = verify(newest[0])
    if reason is not None:
        trial.problems.append(f"final checkpoint incomplete: {reason}")
    stale = _stale(checkpoints, ".tmp-*", ".trash-*")
    if stale:
        trial.problems.append(f"stale temp dirs after the resumed run: {stale}")
    differ = _tensors_differ(newest[0] / "model.safetensors", expected / "model.safetensors")
    if differ:
        trial.problems.append(f"{len(differ)} tensors differ from the reference: {differ[:3]}")
        trial.data_lost = len(differ)
    from ernie_style.testing.pretrain import step_losses

    got, want = step_losses(work), step_losses(Path(reference["run"]))
    wrong = [k for k in want if k not in got or abs(got[k] - want[k]) > 1e-6]
    if wrong or set(got) != set(want):
        trial.problems.append(f"per-step losses differ from the reference at {sorted(wrong)[:3]}")
    return _finish(trial, started)


# ---- finetune ---------------------------------------------------------------------------------
def finetune_setup(root: Path) -> dict[str, Any]:
    """A tiny encoder and two small shipped tasks (sentiment; wiki_ranking cut to 48/16/16)."""
    from ernie_style.testing.finetune import make_encoder_dir, shipped_tasks

    encoder = make_encoder_dir(root / "encoder")
    tasks = shipped_tasks("sentiment", "wiki_ranking")
    sizes = {"train": 48, "dev": 16, "test": 16}
    for split, path in list(tasks[1]["data"].items()):
        cut = root / f"wiki_ranking_{split}.jsonl"
        lines = Path(path).read_text(encoding="utf-8").splitlines(keepends=True)
        cut.write_text("".join(lines[: sizes[split]]), encoding="utf-8")
        tasks[1]["data"][split] = str(cut)
    tasks[1]["batch_size"] = 8
    return {"encoder": str(encoder), "tasks": tasks}


def finetune_config(path: Path, setup: Mapping[str, Any], output: Path) -> Path:
    """The tiny fine-tuning config every finetune trial runs (fp32: exact comparisons)."""
    from ernie_style.testing.finetune import write_config

    return write_config(
        path, Path(setup["encoder"]), output, setup["tasks"], epochs=2, checkpoint_every=3,
        keep_checkpoints=3, log_every=2,
    )  # fmt: skip


def finetune_reference(root: Path, setup: Mapping[str, Any], launch: Launcher) -> dict[str, Any]:
    """The tiny fine-tuning config, uninterrupted (see `timed_reference`)."""
    config = finetune_config(root / "ft-reference.yaml", setup, root / "ft-reference")
    run, log = root / "ft-reference", root / "ft-reference.log"
    return timed_reference("finetune", config, run, log, launch)


def check_best_after_kill(output: Path) -> list[str]:
    """`best/` is absent or complete (weights load, best.json parses)."""
    from safetensors.torch import load_file

    best = output / "best"
    if not best.exists():
        return []
    try:
        load_file(str(best / "model.safetensors"))
        json.loads((best / "best.json").read_text(encoding="utf-8"))
    except Exception as error:  # any failure means a half-written best/
        return [f"best/ is incomplete after the kill: {error}"]
    return []


def finetune_trial(
    root: Path,
    setup: Mapping[str, Any],
    reference: Mapping[str, Any],
    seed: int,
    faults: Sequence[str],
    window: float = 1.0,
    launch: Launcher = fork_launcher,
) -> Trial:
    """Kill a tiny fine-tuning run once per entry of `faults` ("random", "anytime",
    "checkpoint", "best": in the middle of writing best/), resume with `--resume auto` each
    time, then to the end; the final checkpoint, best/ and metrics must equal the reference's.
    Random delays are drawn within `window` times the reference run's measured duration."""
    from ernie_style.train.checkpoint import list_checkpoints, verify

    started = time.monotonic()
    trial = Trial("finetune", "+".join(faults), seed)
    rng = random.Random(seed)
    work = root / f"finetune-{seed}"
    config = finetune_config(root / f"finetune-{seed}.yaml", setup, work)
    checkpoints = work / "checkpoints"
    log = root / f"finetune-{seed}.log"
    for number, fault in enumerate(faults):
        argv = ["finetune", "--config", str(config)] + (["--resume", "auto"] if number else [])
        if fault == "checkpoint":
            skip = rng.randrange(3) if number == 0 else 0
            kill = kill_during_checkpoint_write(launch, argv, checkpoints, skip=skip, log=log)
        elif fault == "best":
            kill = kill_during_write(
                launch, argv, work, ".best.", skip=0, fault="best-write", log=log
            )
        elif fault == "random":
            kill = kill_at_random(
                launch, argv, rng.randrange(1 << 30), 0, window * reference["train_seconds"],
                start_when=file_grew(work / "train_loss.csv"), log=log,
            )  # fmt: skip
        elif fault == "anytime":
            kill = kill_at_random(
                launch, argv, rng.randrange(1 << 30), 0, window * reference["seconds"],
                fault="anytime", log=log,
            )  # fmt: skip
        else:
            raise ValueError(f"unknown finetune fault {fault!r}")
        if fault in ("checkpoint", "best") and kill.killed and not kill.mid_write:
            trial.problems.append(f"kill {number + 1} missed the write ({kill})")
        trial.kills.append(kill)
        trial.problems += check_checkpoints_after_kill(checkpoints)
        trial.problems += check_best_after_kill(work)
    try:
        run_to_end(launch, ["finetune", "--config", str(config), "--resume", "auto"], log)
    except RuntimeError as error:
        trial.problems.append(f"the resumed run failed: {error}")
        trial.data_lost = 1
        return _finish(trial, started)
    ref = Path(reference["run"])
    newest, expected = list_checkpoints(checkpoints), list_checkpoints(ref / "checkpoints")[0]
    if not newest or newest[0].name != expected.name:
        trial.problems.append(f"newest checkpoint {newest[:1]} is not {expected.name}")
        trial.data_lost = 1
        return _finish(trial, started)
    reason = verify(newest[0])
    if reason is not None:
        trial.problems.append(f"final checkpoint incomplete: {reason}")
    stale = _stale(checkpoints, ".tmp-*", ".trash-*") + _stale(work, ".best.*")
    if stale:
        trial.problems.append(f"stale temp dirs after the resumed run: {stale}")
    differ = _tensors_differ(newest[0] / "model.safetensors", expected / "model.safetensors")
    differ += _tensors_differ(work / "best" / "model.safetensors", ref / "best/model.safetensors")
    if differ:
        trial.problems.append(f"{len(differ)} tensors differ from the reference: {differ[:3]}")
        trial.data_lost = len(differ)
    metrics = json.loads((work / "metrics.json").read_text())
    if metrics != json.loads((ref / "metrics.json").read_text()):
        trial.problems.append("metrics.json differs from the reference")
    return _finish(trial, started)


# ---- prepare ----------------------------------------------------------------------------------
def prepare_setup(root: Path, documents: int = 100, paragraphs: int = 12) -> Path:
    """The input of the prepare trials: sample Wikipedia articles (first paragraphs each)."""
    from ernie_style.testing.pretrain import SAMPLE

    subset = root / "subset.jsonl"
    with SAMPLE.open(encoding="utf-8") as f, subset.open("w", encoding="utf-8") as out:
        for _, line in zip(range(documents), f, strict=False):
            row = json.loads(line)
            row["text"] = "\n\n".join(row["text"].split("\n\n")[:paragraphs])
            out.write(json.dumps(row) + "\n")
    return subset


def prepare_argv(source: Path, output: Path, vocab: int = 1500) -> list[str]:
    """`prepare` of the trials: regex annotation, a WordPiece tokenizer trained on the corpus."""
    return [
        "prepare", "--input", str(source), "--output", str(output), "--annotator", "none",
        "--train-tokenizer", str(vocab), "--no-progress",
    ]  # fmt: skip


def prepare_reference(root: Path, source: Path, launch: Launcher) -> dict[str, Any]:
    """Prepare uninterrupted; returns the output and measured durations (total; from the temp
    dir's appearance to the end)."""
    output = root / "prep-reference" / "prepared"
    output.parent.mkdir(parents=True, exist_ok=True)
    condition, _ = new_entry(output.parent, ".prepared.prepare-tmp-")
    start = time.monotonic()
    proc = launch(prepare_argv(source, output), root / "prep-reference.log", None)
    first = None
    while proc.poll() is None:
        if first is None and condition():
            first = time.monotonic() - start
        time.sleep(0.002)
    if proc.wait() != 0:
        raise RuntimeError(f"reference prepare failed:\n{log_tail(root / 'prep-reference.log')}")
    total = time.monotonic() - start
    first = total if first is None else first
    return {"output": str(output), "seconds": total, "build_seconds": max(total - first, 0.05)}


def corpus_differences(got: Path, expected: Path) -> tuple[list[str], int]:
    """How a prepared corpus differs from the reference: (problems, document rows that differ
    or are missing)."""
    from ernie_style.corpus.prepared import load_corpus, load_summary, read_fingerprint

    problems = []
    record, want = read_fingerprint(got), read_fingerprint(expected)
    if record is None:
        return [f"{got} is not a complete prepare output"], -1
    if record["fingerprint"] != (want or {}).get("fingerprint"):
        problems.append("fingerprint differs from the reference")
    a, b = load_corpus(got), load_corpus(expected)
    rows_a, rows_b = a.to_list(), b.to_list()
    lost = sum(x != y for x, y in zip(rows_a, rows_b, strict=False)) + abs(len(a) - len(b))
    if lost:
        problems.append(f"{lost} document rows differ from the reference")
    summary_a, summary_b = load_summary(got), load_summary(expected)
    summary_a.pop("inputs"), summary_b.pop("inputs")
    if summary_a != summary_b:
        problems.append("prepare_summary.json differs from the reference")
    # The tokenizer is compared by size only: WordPiece training in `tokenizers` is not
    # reproducible between processes (huggingface/tokenizers#1794: ids, and on count ties even
    # merges, follow hash-map order), so even two uninterrupted runs differ there.
    from ernie_style.tokenizer import load_tokenizer

    try:
        size_a = len(load_tokenizer(got / "tokenizer"))
    except (OSError, ValueError) as error:
        problems.append(f"tokenizer/ does not load: {error}")
    else:
        if size_a != len(load_tokenizer(expected / "tokenizer")):
            problems.append("tokenizer/ has another vocabulary size than the reference")
    return problems, lost


def prepare_trial(
    root: Path,
    source: Path,
    reference: Mapping[str, Any],
    seed: int,
    fault: str,
    launch: Launcher = fork_launcher,
    crash_at: tuple[int, str] | None = None,
) -> Trial:
    """Kill `prepare` ("anytime": a random moment since the launch; "building": a random
    moment after its temp dir appeared; "replace": the same over an existing complete output
    made with other settings; "rename" / "rename-replace": just before or after its
    `crash_at = (k, "before"|"after")` rename, where the output is installed); the output must
    be absent or complete (never a partial corpus a later run would take for complete); a
    re-run must give the reference corpus."""
    from ernie_style.corpus.prepared import load_corpus, read_fingerprint

    started = time.monotonic()
    trial = Trial("prepare", fault, seed)
    rng = random.Random(seed)
    output = root / f"prepare-{seed}" / "prepared"
    output.parent.mkdir(parents=True, exist_ok=True)
    log = root / f"prepare-{seed}.log"
    argv = prepare_argv(source, output)
    old = None
    if fault in ("replace", "rename-replace"):
        run_to_end(launch, prepare_argv(source, output, vocab=1000), log)
        old = read_fingerprint(output)
    if fault.startswith("rename"):
        kill, _ = call_forked(argv, log=log, crash_at=crash_at)
        kill.fault = fault
    elif fault == "anytime":
        kill = kill_at_random(
            launch, argv, rng.randrange(1 << 30), 0, reference["seconds"], fault=fault, log=log
        )
    elif fault in ("building", "replace"):
        condition, _ = new_entry(output.parent, ".prepared.prepare-tmp-")
        kill = kill_at_random(
            launch, argv, rng.randrange(1 << 30), 0, reference["build_seconds"],
            start_when=condition, fault=fault, log=log,
        )  # fmt: skip
    else:
        raise ValueError(f"unknown prepare fault {fault!r}")
    trial.kills.append(kill)
    if fault.startswith("rename") and not kill.killed:
        trial.problems.append(f"the run made fewer than {crash_at} renames")
    if output.exists():
        record = read_fingerprint(output)
        if record is None:
            trial.problems.append(f"after the kill {output} exists but is not complete")
        else:
            allowed = {read_fingerprint(Path(reference["output"]))["fingerprint"]}
            allowed |= {old["fingerprint"]} if old else set()
            if record["fingerprint"] not in allowed:
                trial.problems.append("after the kill the output has an unexpected fingerprint")
            try:
                load_corpus(output)
            except ValueError as error:
                trial.problems.append(f"after the kill the output does not load: {error}")
    try:
        run_to_end(launch, argv, log)
    except RuntimeError as error:
        trial.problems.append(f"the re-run failed: {error}")
        trial.data_lost = 1
        return _finish(trial, started)
    problems, lost = corpus_differences(output, Path(reference["output"]))
    trial.problems += problems
    trial.data_lost = max(lost, 0) if lost >= 0 else 1
    stale = _stale(output.parent, ".prepared.prepare-tmp-*", ".prepared.prepare-old-*")
    if stale:
        trial.problems.append(f"stale temp dirs after the re-run: {stale}")
    return _finish(trial, started)


# ---- ingest -----------------------------------------------------------------------------------
ACTIVE_LEARNING = ROOT / "data" / "active_learning" / "wnut16"
INGEST_CONFIG = ROOT / "configs" / "active_learning" / "wnut16_pos.yaml"
INGEST_TASKS = ("ner", "pos")
INGEST_BATCHES = ("batch_a.jsonl", "batch_b.jsonl")


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def ingest_setup(root: Path) -> Path:
    """A template work dir: pool.jsonl (60 WNUT-16 tweets), labeled/ (the 40-tweet seed set),
    config.yaml (the shipped WNUT-16 config, absolute data paths) and two annotated batches
    (oracle labels): A = pool rows 0-23 (selected, round "kill-a"), B = rows 18-41 (a manual
    batch; 6 ids overlap A)."""
    template = root / "ingest-template"
    (template / "labeled").mkdir(parents=True)
    for task in INGEST_TASKS:
        shutil.copy(ACTIVE_LEARNING / "seed" / f"{task}.jsonl", template / "labeled")
    lines = (ACTIVE_LEARNING / "pool.jsonl").read_text(encoding="utf-8").splitlines(True)
    (template / "pool.jsonl").write_text("".join(lines[:60]), encoding="utf-8")
    pool = [json.loads(line) for line in lines[:60]]
    truth = {
        t: {r["id"]: r["tags"] for r in _jsonl(ACTIVE_LEARNING / "oracle" / f"{t}.jsonl")}
        for t in INGEST_TASKS
    }

    def annotated(rows: list[dict[str, Any]], meta: dict[str, Any] | None) -> str:
        out = []
        for rank, row in enumerate(rows):
            line = row | {"labels": {t: truth[t][row["id"]] for t in INGEST_TASKS}}
            if meta is not None:
                line["selection"] = meta | {"rank": rank}
            out.append(json.dumps(line) + "\n")
        return "".join(out)

    meta = {"batch": "kill-a", "strategy": "random", "budget": 24, "tasks": list(INGEST_TASKS)}
    (template / INGEST_BATCHES[0]).write_text(annotated(pool[:24], meta), encoding="utf-8")
    (template / INGEST_BATCHES[1]).write_text(annotated(pool[18:42], None), encoding="utf-8")
    config = yaml.safe_load(INGEST_CONFIG.read_text(encoding="utf-8"))
    for task in config["tasks"]:
        task["data"] = {split: str(ROOT / path) for split, path in task["data"].items()}
    (template / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return template


def ingest_argv(batch: str) -> list[str]:
    """`ingest` of one batch, run in the work dir (relative paths: comparable states)."""
    return [
        "ingest", "--batch", batch, "--labeled", "labeled", "--tasks", ",".join(INGEST_TASKS),
        "--config", "config.yaml", "--pool", "pool.jsonl",
    ]  # fmt: skip


def ingest_snapshot(work: Path) -> dict[str, Any]:
    """The labeled files and pool (bytes), the loop state without timestamps, and leftovers."""
    state_path = work / "labeled" / "loop_state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else None
    for entry in (state or {}).get("rounds", []):
        entry.pop("ingested_at", None)
        entry.pop("selected_at", None)
    known = {f"{t}.jsonl" for t in INGEST_TASKS} | {"loop_state.json", ".ernie-style.lock"}
    return {
        "labeled": {t: (work / "labeled" / f"{t}.jsonl").read_text() for t in INGEST_TASKS},
        "pool": (work / "pool.jsonl").read_text(),
        "state": state,
        "leftovers": sorted(
            [p.name for p in (work / "labeled").iterdir() if p.name not in known]
            + [p.name for p in work.glob(".pool.jsonl.*")]
        ),
    }


def check_ingest_invariants(work: Path, template: Path) -> tuple[list[str], int]:
    """At any moment (e.g. right after a kill): no labeled row is lost (the seed rows stay, in
    place) or duplicated, every labeled id comes from the seed or a batch, and no pool id has
    left the pool without being labelled for every task. Returns (problems, rows affected)."""
    problems, bad = [], 0
    batch_ids = {r["id"] for b in INGEST_BATCHES for r in _jsonl(template / b)}
    labeled: dict[str, set[str]] = {}
    for task in INGEST_TASKS:
        seed = (template / "labeled" / f"{task}.jsonl").read_text()
        text = (work / "labeled" / f"{task}.jsonl").read_text()
        if not text.startswith(seed):
            problems.append(f"{task}: seed rows changed or lost")
            bad += 1
        ids = [r["id"] for r in _jsonl(work / "labeled" / f"{task}.jsonl")]
        dups = len(ids) - len(set(ids))
        if dups:
            problems.append(f"{task}: {dups} duplicated rows")
            bad += dups
        seed_ids = {r["id"] for r in _jsonl(template / "labeled" / f"{task}.jsonl")}
        strays = set(ids) - seed_ids - batch_ids
        if strays:
            problems.append(f"{task}: unknown ids {sorted(strays)[:3]}")
            bad += len(strays)
        labeled[task] = set(ids)
    pool_before = {r["id"] for r in _jsonl(template / "pool.jsonl")}
    pool_now = {r["id"] for r in _jsonl(work / "pool.jsonl")}
    gone = pool_before - pool_now
    unlabeled = {i for i in gone if not all(i in labeled[t] for t in INGEST_TASKS)}
    if unlabeled:
        problems.append(f"{len(unlabeled)} ids left the pool without being labelled")
        bad += len(unlabeled)
    return problems, bad


def compare_ingest(
    work: Path, reference: Mapping[str, Any], exact: bool = True
) -> tuple[list[str], int]:
    """The finished labeled set, pool and state against the uninterrupted reference: byte for
    byte (`exact`), or as sets (when a kill made the batches land in another order)."""
    got = ingest_snapshot(work)
    problems, lost = [], 0
    for task in INGEST_TASKS:
        a, b = got["labeled"][task].splitlines(), reference["labeled"][task].splitlines()
        missing, extra = set(b) - set(a), len(a) - len(set(a)) + len(set(a) - set(b))
        if missing or extra:
            problems.append(f"{task}: {len(missing)} rows lost, {extra} duplicated or unexpected")
            lost += len(missing) + extra
        elif exact and a != b:
            problems.append(f"{task}: rows in another order than the reference")
    a, b = got["pool"].splitlines(), reference["pool"].splitlines()
    if set(a) != set(b) or len(a) != len(b):
        problems.append(f"pool: {len(set(b) - set(a))} missing, {len(set(a) - set(b))} extra ids")
        lost += len(set(a) ^ set(b))
    if got["leftovers"]:
        problems.append(f"leftover files {got['leftovers']}")
    state, want = got["state"], reference["state"]
    if exact and state != want:
        problems.append("loop state differs from the reference")
    elif not exact:
        rounds = {r["batch"]: r for r in (state or {}).get("rounds", [])}
        for entry in want["rounds"]:
            if entry["batch"] not in rounds:
                problems.append(f"loop state lacks the round of batch {entry['batch']}")
        for task in INGEST_TASKS:
            ingested = [i for r in rounds.values() for i in r["ingested"].get(task, [])]
            expected = {i for r in want["rounds"] for i in r["ingested"].get(task, [])}
            if sorted(ingested) != sorted(expected):
                problems.append(f"loop state: ids ingested for {task} differ from the reference")
        if state and state["labeled"] != want["labeled"]:
            problems.append("loop state: labeled counts differ from the reference")
    return problems, lost


def ingest_trials(
    root: Path,
    seed: int,
    random_trials: int,
    crash_points: bool = True,
) -> list[Trial]:
    """Ingest batch A then B in a fresh copy of the template, killing one ingest per trial:
    at every rename point of ingest A (just before and just after each, and after each with B
    ingested before A is re-run; `crash_points`), and at
    `random_trials` seeded random moments (within the measured duration of an uninterrupted
    ingest) of A or B; after the kill the invariants must hold, then the killed ingest (or,
    in some trials, the other batch first) is re-run and the result must equal the reference.
    Runs in forked children: call from a process that may fork (see the module docstring)."""
    preload("ingest")
    template = ingest_setup(root)
    ref_dir = root / "ingest-reference"
    shutil.copytree(template, ref_dir)
    durations, renames = [], 0
    for batch in INGEST_BATCHES:
        begin = time.monotonic()
        _, count = call_forked(ingest_argv(batch), cwd=ref_dir, log=root / "ingest-ref.log")
        durations.append(time.monotonic() - begin)
        renames = renames or count
    reference = ingest_snapshot(ref_dir)
    rng = random.Random(seed)
    plans: list[dict[str, Any]] = []
    if crash_points:
        for k in range(1, renames + 1):
            for when, order in (("before", "same"), ("after", "same"), ("after", "other")):
                plans.append({"batch": 0, "crash_at": (k, when), "order": order})
    for _ in range(random_trials):
        batch = rng.randrange(2)
        plans.append(
            {
                "batch": batch,
                "delay": rng.uniform(0, durations[batch]),
                "order": rng.choice(["same", "other"]) if batch == 0 else "same",
            }
        )
    trials = []
    for number, plan in enumerate(plans):
        started = time.monotonic()
        work = root / f"ingest-{seed}-{number}"
        shutil.copytree(template, work)
        log = root / f"ingest-{seed}-{number}.log"
        fault = "rename" if "crash_at" in plan else "random"
        trial = Trial("ingest", fault, seed * 1000 + number)
        if plan["batch"] == 1:
            run_to_end(fork_launcher, ingest_argv(INGEST_BATCHES[0]), log, cwd=work)
        kill, _ = call_forked(
            ingest_argv(INGEST_BATCHES[plan["batch"]]),
            cwd=work,
            log=log,
            delay=plan.get("delay"),
            crash_at=plan.get("crash_at"),
        )
        kill.detail += f" of batch {'AB'[plan['batch']]}; then {plan['order']} order"
        trial.kills.append(kill)
        problems, bad = check_ingest_invariants(work, template)
        trial.problems += [f"after the kill: {p}" for p in problems]
        trial.data_lost += bad
        order = list(INGEST_BATCHES[plan["batch"] :])
        if plan["order"] == "other":
            order = [INGEST_BATCHES[1], INGEST_BATCHES[0]]
        try:
            for batch in order:
                run_to_end(fork_launcher, ingest_argv(batch), log, cwd=work)
        except RuntimeError as error:
            trial.problems.append(f"re-running ingest failed: {error}")
            trial.data_lost += 1
            trials.append(_finish(trial, started))
            continue
        problems, lost = compare_ingest(work, reference, exact=plan["order"] == "same")
        trial.problems += problems
        trial.data_lost += lost
        trials.append(_finish(trial, started))
    return trials


# ---- the driver (what the pytest process runs instead of forking itself) ---------------------
def run_driver(job: Mapping[str, Any], root: Path, timeout: float = 900) -> dict[str, Any]:
    """Run `job` (see `_drive`) in a fresh driver process; returns its JSON result."""
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


def _drive(job: Mapping[str, Any]) -> dict[str, Any]:
    """Run the trials of one command in this (fresh, single-threaded) process."""
    root = Path(job["root"])
    command = job["command"]
    preload(command)
    start = time.monotonic()
    out: dict[str, Any] = {}
    if command == "pretrain":
        corpus = Path(job["corpus"])
        reference = pretrain_reference(root, corpus, fork_launcher)
        trials = [
            pretrain_trial(root, corpus, reference, t["seed"], t["faults"], t.get("window", 1))
            for t in job["trials"]
        ]
        out["reference"] = reference
    elif command == "finetune":
        setup = finetune_setup(root)
        reference = finetune_reference(root, setup, fork_launcher)
        trials = [
            finetune_trial(
                root, setup, reference, t["seed"], t["faults"], window=t.get("window", 1.0)
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
    result = _drive(json.loads(job_file.read_text(encoding="utf-8")))
    result_file.write_text(json.dumps(result, indent=1), encoding="utf-8")
