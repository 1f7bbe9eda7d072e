"""SIGKILL `export` mid-write, between the renames of the fallback swap, and after the atomic
exchange: the previous release is never lost, and what is at the release path always loads."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys

import pytest
from transformers import AutoModel

from ernie_style.fileio import atomic_dir, sweep_stale_dirs
from ernie_style.pretrain.export import export_release
from ernie_style.testing.pretrain import child_env, pretrain_cmd, write_config

pytestmark = pytest.mark.slow

KILLER = """
import os, signal, sys
import ernie_style.pretrain.export as export
import ernie_style.fileio as fileio

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

mode = sys.argv[3]
if mode == "mid-write":  # the model is written, the tokenizer not yet
    export.load_tokenizer = die
elif mode == "between-renames":  # no atomic exchange: old renamed aside, new not yet in
    fileio._exchange = lambda a, b: False
    real_rename, calls = os.rename, []
    def rename(a, b):
        calls.append(a)
        if len(calls) == 2:
            die()
        return real_rename(a, b)
    fileio.os.rename = rename
elif mode == "after-exchange":  # the new release is in, the old copy not yet removed
    fileio.shutil.rmtree = die
export.export_release(sys.argv[1], sys.argv[2])
"""


def digest(folder):
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def run_dir(small_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("export_run")
    config = write_config(root / "run.yaml", small_corpus, root / "run")
    subprocess.run(pretrain_cmd(config), check=True, capture_output=True, env=child_env())
    return root / "run"


@pytest.fixture(scope="module")
def releases(run_dir, tmp_path_factory):
    """An old release (step 5) and the release of the final checkpoint, for comparison."""
    root = tmp_path_factory.mktemp("releases")
    old = export_release(run_dir, root / "old", checkpoint="step-00000005")
    new = export_release(run_dir, root / "new")
    assert digest(old) != digest(new)
    return digest(old), digest(new), old


def kill_export(run_dir, release, mode):
    result = subprocess.run(
        [sys.executable, "-c", KILLER, str(run_dir), str(release), mode],
        capture_output=True,
        env=child_env(),
    )
    assert result.returncode == -9, result.stderr.decode()[-2000:]


@pytest.mark.parametrize("mode", ["mid-write", "after-exchange", "between-renames"])
def test_a_killed_export_never_loses_the_previous_release(run_dir, releases, tmp_path, mode):
    old_digest, new_digest, old = releases
    release = tmp_path / "release"
    shutil.copytree(old, release)
    kill_export(run_dir, release, mode)
    leftovers = list(tmp_path.glob(".release.*"))
    assert leftovers  # the dead writer's directory is still there...
    if mode == "between-renames":
        assert not release.exists()  # the one window of the fallback path (no renameat2)
        assert sweep_stale_dirs(release) >= 1  # ...which the next writer repairs
    expected = new_digest if mode == "after-exchange" else old_digest
    assert digest(release) == expected  # complete: the old release, or (swapped) the new one
    AutoModel.from_pretrained(str(release))
    # The next export sweeps what the dead one left and installs the new release.
    export_release(run_dir, release)
    assert digest(release) == new_digest
    assert list(tmp_path.glob(".release.*")) == []


def test_atomic_dir_keeps_the_target_when_the_block_fails(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "a.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("disk full")
    assert (target / "a.txt").read_text() == "old" and list(tmp_path.iterdir()) == [target]
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["b.txt"] and list(tmp_path.iterdir()) == [target]
