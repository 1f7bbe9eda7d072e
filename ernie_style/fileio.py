"""Small file helpers shared by every command: atomic text writes, directories built aside and
swapped in (`atomic_dir`), and telling whether the process that left a temp file still runs."""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_TMP, _OLD = "tmp", "old"
_RENAME_EXCHANGE = 2  # linux/fs.h


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to a temp file next to `path`, fsync it, then rename it into place. On
    failure (a full disk, say) the temp file is removed and `path` keeps its previous content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())  # the rename must not reach the disk before the data
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_figure(figure: Any, path: Path, dpi: int | None = None) -> Path:
    """Save a matplotlib figure as PNG via a temp file renamed into place (a reader never sees
    half a PNG), then close it."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    try:
        figure.savefig(tmp, **({"dpi": dpi} if dpi else {}))
        os.replace(tmp, path)
    finally:
        plt.close(figure)
        tmp.unlink(missing_ok=True)
    return path


def pid_alive(pid: int | str) -> bool:
    """Whether process `pid` still runs (e.g. the writer named in a temp file's suffix). A pid
    that is not a number, or is out of range, names no running process."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, OverflowError, ProcessLookupError):
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield an empty temporary directory next to `target`; when the block ends without an
    error, the directory replaces `target` in one step, so `target` is always either the
    previous complete version or the new complete one, never missing or half-written.

    On Linux the two are exchanged atomically (renameat2 RENAME_EXCHANGE); elsewhere the old
    version is renamed aside first and put back by the next writer if the process died in
    between (`sweep_stale_dirs`). The old version is deleted only after the new one is in place.
    On an error the temporary directory is removed and `target` is untouched.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_dirs(target)
    tmp = sibling(target, _TMP)
    tmp.mkdir()
    try:
        yield tmp
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sibling(target: Path, tag: str) -> Path:
    """A fresh name `.NAME.TAG-PID-TOKEN` next to `target` (the pid tells sweepers whether its
    writer still runs)."""
    return target.parent / f".{target.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}"


def replace_dir(new: Path, target: Path, old_tag: str = _OLD, exchange: bool = True) -> None:
    """Put the complete directory `new` at `target`, deleting the previous version only once
    the new one is in place: an atomic exchange where the system has one (and `exchange`),
    else the previous version is renamed aside (`.NAME.OLD_TAG-PID-TOKEN`) first and put back
    if the second rename fails."""
    if not target.exists():
        os.rename(new, target)
        return
    if exchange and _exchange(new, target):  # `new` now holds the previous version
        shutil.rmtree(new, ignore_errors=True)
        return
    old = sibling(target, old_tag)
    os.rename(target, old)
    try:
        os.rename(new, target)
    except OSError:
        os.rename(old, target)  # put the previous version back rather than leave nothing
        raise
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths (Linux renameat2); False where that is not available."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.ENOTSUP):
        return False  # a filesystem or kernel without the flag
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def sweep_stale_dirs(
    target: Path, tmp_tag: str = _TMP, old_tag: str = _OLD, restore: bool = True
) -> int:
    """Clean up after writers of `target` that died: remove their temporary directories, and
    (with `restore`) if `target` is missing but a dead writer had renamed the previous version
    aside, put that version back. Returns how many directories were handled."""
    handled = 0
    for tag in (old_tag, tmp_tag):
        for path in sorted(target.parent.glob(f".{target.name}.{tag}-*")):
            pid = path.name.removeprefix(f".{target.name}.{tag}-").split("-")[0]
            if not pid.isdigit() or pid_alive(pid) or not path.is_dir():
                continue
            if restore and tag == old_tag and not target.exists():
                os.rename(path, target)
            else:
                shutil.rmtree(path, ignore_errors=True)
            handled += 1
    return handled
