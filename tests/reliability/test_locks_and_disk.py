"""Run locks and full disks: a second run on a locked directory is refused in one line, a
killed run's lock is free again, and a checkpoint write that fails (file too large, no space)
leaves the previous checkpoint intact and chosen by `--resume auto`."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from ernie_style.run_lock import LOCK_FILE, RunLock, RunLockedError, locked_run
from ernie_style.testing.pretrain import child_env, pretrain_cmd, write_config
from ernie_style.train.checkpoint import (
    CheckpointWriteError,
    find_resumable,
    list_checkpoints,
    verify,
    writing_checkpoint,
)

ERROR = "ernie-style: error:"
#: Above every log file of the tiny run, below its model.safetensors (about 2.7 MB).
FILE_SIZE_LIMIT = 1_000_000

HOLDER = """
import sys, time
from ernie_style.run_lock import RunLock
RunLock(sys.argv[1], "pretrain").acquire()
print("held", flush=True)
time.sleep(120)
"""

#: Holds the lock, forks a child that outlives it (like a DataLoader worker), then is killed.
#: The child says "forked" once it runs (after the at-fork handlers), the parent its pid.
HOLDER_WITH_CHILD = """
import os, sys, time
from ernie_style.run_lock import RunLock
RunLock(sys.argv[1], "pretrain").acquire()
child = os.fork()
if child == 0:
    os.write(1, b"forked\\n")  # one write each: two processes share the pipe
    time.sleep(60)
    os._exit(0)
os.write(1, f"{child}\\n".encode())
time.sleep(120)
"""


def error_lines(stderr: str) -> list[str]:
    """The CLI's error lines of a child's stderr (libraries may add warnings around them)."""
    assert "Traceback" not in stderr, stderr[-3000:]
    return [line for line in stderr.splitlines() if line.startswith(ERROR)]


# ---- RunLock in-process ----------------------------------------------------------------------
def test_a_second_lock_is_refused_in_one_line_naming_the_holder(tmp_path):
    with RunLock(tmp_path, "pretrain"), pytest.raises(RunLockedError) as refused:
        RunLock(tmp_path, "finetune").acquire()
    message = str(refused.value)
    assert "\n" not in message
    assert f"pid {os.getpid()}" in message and "ernie-style pretrain run" in message
    assert str(tmp_path / LOCK_FILE) in message
    assert not (tmp_path / LOCK_FILE).exists()  # released: the file is gone
    with RunLock(tmp_path, "finetune") as lock:  # and the directory is free again
        assert lock.held


def test_a_killed_holder_leaves_no_stuck_lock(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=f"pid {holder.pid} on host"):
            RunLock(tmp_path, "pretrain").acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / LOCK_FILE).exists()  # SIGKILL leaves the file behind, unlocked
    with RunLock(tmp_path, "pretrain") as lock:
        assert lock.held
        holder_record = json.loads((tmp_path / LOCK_FILE).read_text())
        assert holder_record["pid"] == os.getpid()


def test_a_forked_child_does_not_keep_a_killed_holders_lock(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER_WITH_CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    lines = {holder.stdout.readline().strip() for _ in range(2)}  # either order
    assert "forked" in lines, lines
    child = int((lines - {"forked"}).pop())
    try:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        os.kill(child, 0)  # the child still runs...
        with RunLock(tmp_path, "pretrain") as lock:  # ...and the run directory is free
            assert lock.held
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def test_an_empty_run_dir_made_for_the_lock_is_removed_again(tmp_path):
    with locked_run(tmp_path / "run", "pretrain"):
        assert (tmp_path / "run" / LOCK_FILE).exists()
    assert not (tmp_path / "run").exists()


def test_only_global_rank_zero_locks(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with RunLock(tmp_path, "pretrain"), locked_run(tmp_path, "pretrain") as lock:
        assert lock is None


def test_an_os_error_without_a_file_name_is_reraised_naming_the_run_dir(tmp_path):
    with pytest.raises(OSError) as raised, locked_run(tmp_path, "pretrain", name_directory=True):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(tmp_path)


# ---- checkpoint writes that fail ---------------------------------------------------------------
@contextmanager
def file_size_limit(limit: int):
    """Lower this process's file size limit (writes past it fail with EFBIG, not SIGXFSZ)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def write_checkpoint(root: Path, step: int, weights: int, moments: int) -> Path:
    """A checkpoint with `weights` floats of weights and `moments` floats of optimizer state."""
    with writing_checkpoint(root, step) as writer:
        writer.save_tensors("model.safetensors", {"w": torch.ones(weights)})
        writer.save_torch("optimizer.pt", {"state": {"w": {"exp_avg": torch.ones(moments)}}})
        writer.save_json("trainer_state.json", {"step": step})
        return writer.commit({"step": step})


def fail_writes_of(monkeypatch, name: str) -> None:
    """Path.write_text of `name` writes half its text, then raises ENOSPC (a full disk)."""
    original = Path.write_text

    def full_disk(self, text, *args, **kwargs):
        if self.name != name:
            return original(self, text, *args, **kwargs)
        original(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full_disk)


@pytest.mark.parametrize(
    "fault", ["model too large", "optimizer too large", "state: no space", "manifest: no space"]
)
def test_a_failed_checkpoint_write_leaves_the_previous_one_intact(tmp_path, monkeypatch, fault):
    root = tmp_path / "checkpoints"
    previous = write_checkpoint(root, 8, weights=100, moments=100)
    with pytest.raises(CheckpointWriteError) as failed:
        if fault == "model too large":
            with file_size_limit(64_000):
                write_checkpoint(root, 12, weights=100_000, moments=100)
        elif fault == "optimizer too large":
            with file_size_limit(64_000):
                write_checkpoint(root, 12, weights=100, moments=100_000)
        else:
            fail_writes_of(
                monkeypatch, "trainer_state.json" if "state" in fault else "manifest.json.tmp"
            )
            write_checkpoint(root, 12, weights=100, moments=100)
    message = str(failed.value)
    cause = "File too large" if "large" in fault else "No space left on device"
    assert message == (
        f"could not write checkpoint {root / 'step-00000012'} ({cause}); the previous "
        "checkpoint step-00000008 is intact (--resume auto uses it)"
    )
    assert sorted(p.name for p in root.iterdir()) == ["step-00000008"]  # no .tmp-* left
    assert verify(previous) is None and find_resumable(root) == previous


def test_a_failed_first_checkpoint_says_there_is_none_to_fall_back_to(tmp_path, monkeypatch):
    fail_writes_of(monkeypatch, "trainer_state.json")
    with pytest.raises(CheckpointWriteError, match="there is no earlier checkpoint"):
        write_checkpoint(tmp_path, 4, weights=10, moments=10)
    assert list(tmp_path.iterdir()) == []


# ---- real runs: lock, SIGKILL, file size limit, resume -------------------------------------------
def _limit_file_size() -> None:  # preexec_fn of the child that runs into a "full disk"
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # ignored dispositions survive exec
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, "the run ended before it was caught"
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def killed_run(small_corpus, tmp_path_factory):
    """A 12-step run frozen (SIGSTOP) after its first checkpoint, a second run started on its
    output_dir meanwhile, then the first one SIGKILLed."""
    root = tmp_path_factory.mktemp("locked")
    config = write_config(
        root / "run.yaml",
        small_corpus,
        root / "run",
        tasks={"knowledge_masking": {"budget": 12}},
        checkpoint_every=2,
        eval_every=100,
        log_every=100,
    )
    first = subprocess.Popen(pretrain_cmd(config), env=child_env(), stderr=subprocess.DEVNULL)
    checkpoints = root / "run" / "checkpoints"
    try:
        _wait_for(lambda: bool(list_checkpoints(checkpoints)), first)
        first.send_signal(signal.SIGSTOP)  # holds the lock, makes no progress
        second = subprocess.run(
            pretrain_cmd(config, "--resume", "auto"),
            env=child_env(),
            capture_output=True,
            text=True,
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    return {"config": config, "run": root / "run", "first": first, "second": second}


def test_a_second_run_on_a_locked_output_dir_is_refused(killed_run):
    second, first = killed_run["second"], killed_run["first"]
    assert second.returncode == 3
    (line,) = error_lines(second.stderr)
    assert second.stderr.rstrip().splitlines()[-1] == line
    run = killed_run["run"]
    expected = (
        f"{ERROR} output_dir {run} is in use by another ernie-style pretrain run (pid "
        f"{first.pid} on host {socket.gethostname()}, started STARTED); wait for it to end or "
        f"choose another output_dir (lock file {run / LOCK_FILE})"
    )
    head, tail = re.escape(expected).split("STARTED")
    assert re.fullmatch(f"{head}[0-9T:+-]+{tail}", line), line


def test_disk_full_keeps_the_previous_checkpoint_then_resume_finishes(killed_run):
    run, config = killed_run["run"], killed_run["config"]
    checkpoints = run / "checkpoints"
    before = find_resumable(checkpoints)
    assert before is not None
    # The killed run's lock does not block; the next checkpoint write hits the size limit.
    full = subprocess.run(
        pretrain_cmd(config, "--resume", "auto"),
        env=child_env(),
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size,
    )
    assert full.returncode == 1, full.stderr[-3000:]
    (line,) = error_lines(full.stderr)
    assert full.stderr.rstrip().splitlines()[-1] == line
    step = json.loads((before / "trainer_state.json").read_text())["step"]
    failed = checkpoints / f"step-{step + 2:08d}"
    assert line == (
        f"{ERROR} could not write checkpoint {failed} (File too large); the previous checkpoint "
        f"{before.name} is intact (--resume auto uses it)"
    )
    assert not failed.exists()
    killed = f"-{killed_run['first'].pid}"  # the frozen run may have been mid-write
    assert not [p for p in checkpoints.glob(".tmp-*") if not p.name.endswith(killed)]
    assert verify(before) is None and find_resumable(checkpoints) == before
    # Without the limit, --resume auto continues from there and finishes.
    done = subprocess.run(
        pretrain_cmd(config, "--resume", "auto"), env=child_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from {before}" in done.stderr + done.stdout
    assert find_resumable(checkpoints).name == "step-00000012"
    assert not list(checkpoints.glob(".tmp-*")) and not (run / LOCK_FILE).exists()
