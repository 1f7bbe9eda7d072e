"""One run at a time per output directory: an advisory `flock` on a lock file.

    with locked_run("runs/x", "pretrain"):      # refuses if another run holds runs/x
        ...

`RunLock` takes `fcntl.flock(LOCK_EX | LOCK_NB)` on `DIR/.ernie-style.lock` and writes the
holder's pid, host, command and start time into it, so a refused run can say who holds it. The
kernel drops the lock when the holder's last descriptor of it closes, which happens however the
process ends (SIGKILL and OOM kill included), so a killed run never leaves the directory locked
(its file stays behind, unlocked, and is reused; a run that ends normally removes it). The
descriptor is close-on-exec, but a child made with a plain `fork` (no exec) keeps the lock until
it exits too.

Limits: `flock` is advisory (only ernie-style runs check it). On NFS it is emulated with POSIX
locks and needs the server's lock manager: with `nolock` mounts (or filesystems without lock
support) two nodes can each take the lock for the same directory. Where the filesystem refuses
locking outright (ENOLCK, EOPNOTSUPP), the run goes on unprotected with a warning.

In a distributed run every rank shares the output directory, so only global rank 0 (`RANK`)
takes the lock (`locked_run`).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Any

#: Name of the lock file inside a locked directory.
LOCK_FILE = ".ernie-style.lock"
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


#: Descriptors of the locks this process holds. A forked child (a DataLoader worker) shares
#: the lock's open file description: it closes its copies at once, or a run killed with -9
#: would stay locked until its orphaned workers notice and exit.
_HELD_FDS: set[int] = set()


def _close_inherited_locks() -> None:
    for fd in list(_HELD_FDS):  # close only: LOCK_UN here would unlock the parent's lock too
        with suppress(OSError):
            os.close(fd)
    _HELD_FDS.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)


class RunLockedError(RuntimeError):
    """Another live ernie-style run holds the lock of the directory (one-line message)."""


class RunLock:
    """Exclusive, non-blocking lock of `directory` for one ernie-style command.

    `what` names the directory in messages (e.g. "output_dir", "--labeled"); `path` overrides
    the lock file (default `directory/.ernie-style.lock`). The lock file's directory is created
    if needed, and removed again on release if it is still empty then.
    """

    def __init__(
        self,
        directory: str | Path,
        command: str,
        what: str = "output_dir",
        path: str | Path | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.command = command
        self.what = what
        self.path = Path(path) if path is not None else self.directory / LOCK_FILE
        self._fd: int | None = None
        self._created = False  # whether acquire made the lock file's directory

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock or raise `RunLockedError` naming the holder (never waits)."""
        if self._fd is not None:
            return self
        while self._fd is None:
            if not self.path.parent.is_dir():
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._created = True
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise RunLockedError(self._refusal(holder)) from None
            except OSError as error:
                os.close(fd)
                if error.errno not in _UNSUPPORTED:
                    raise
                warnings.warn(
                    f"{self.path}: file locking is not supported here ({error.strerror}); "
                    f"not protected against a second run on {self.directory}",
                    stacklevel=2,
                )
                return self
            if _same_file(fd, self.path):
                self._fd = fd
                _HELD_FDS.add(fd)
            else:  # the holder removed the file between our open and flock: lock the new one
                os.close(fd)
        self._write_holder()
        return self

    def release(self) -> None:
        """Drop the lock and remove the lock file (a killed run leaves the file, unlocked)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        _HELD_FDS.discard(fd)
        with suppress(OSError):
            self.path.unlink(missing_ok=True)  # while still locked: see `_same_file`
            if self._created:  # a run refused before writing anything leaves no empty dir
                self.path.parent.rmdir()
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def _write_holder(self) -> None:
        """Record who holds the lock; best effort (a full disk must not stop the run here)."""
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.command,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        data = (json.dumps(holder) + "\n").encode("utf-8")
        with suppress(OSError):
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, data, 0)

    def _refusal(self, holder: dict[str, Any] | None) -> str:
        if holder:
            who = (
                f"another ernie-style {holder.get('command', '?')} run (pid "
                f"{holder.get('pid', '?')} on host {holder.get('host', '?')}, started "
                f"{holder.get('started', '?')})"
            )
        else:
            who = "another ernie-style run"
        return (
            f"{self.what} {self.directory} is in use by {who}; wait for it to end or choose "
            f"another {self.what} (lock file {self.path})"
        )


def _same_file(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open as `fd` (not removed or replaced)."""
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _read_holder(fd: int) -> dict[str, Any] | None:
    """The holder record of a lock file, or None if unreadable (e.g. being written)."""
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def is_global_rank_zero() -> bool:
    """True outside distributed runs and on global rank 0 (`RANK` set by torchrun/accelerate)."""
    return int(os.environ.get("RANK", "0") or 0) == 0


@contextmanager
def locked_run(
    directory: str | Path,
    command: str,
    what: str = "output_dir",
    path: str | Path | None = None,
    name_directory: bool = False,
) -> Iterator[RunLock | None]:
    """Hold `RunLock(directory, ...)` on global rank 0 for the body (other ranks take none).

    With `name_directory`, OSErrors of the body that name no file name `directory`
    (`oserrors_name`).
    """
    lock = RunLock(directory, command, what, path) if is_global_rank_zero() else None
    if lock is not None:
        lock.acquire()
    try:
        if name_directory:
            with oserrors_name(directory):
                yield lock
        else:
            yield lock
    finally:
        if lock is not None:
            lock.release()


@contextmanager
def oserrors_name(directory: str | Path) -> Iterator[None]:
    """Re-raise an OSError of the body that names no file (a write to an open log file failing
    with "No space left on device", say) naming `directory`, so the CLI's one-line message says
    where; for commands that write only under `directory`."""
    try:
        yield
    except OSError as error:
        if error.filename is None and error.errno and error.strerror:
            raise OSError(error.errno, error.strerror, str(directory)) from error
        raise
