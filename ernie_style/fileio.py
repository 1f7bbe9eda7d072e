"""Small file helpers shared by every command: atomic text writes, and telling whether the
process that left a temp file (`NAME.tmp-PID`) still runs."""

from __future__ import annotations

import os
from pathlib import Path


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
