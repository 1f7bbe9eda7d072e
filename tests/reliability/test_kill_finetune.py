"""SIGKILL `finetune` at a random moment, in the middle of a checkpoint write and in the middle
of writing best/ (three kills in one trial, each on the resumed run): `--resume auto` always
finds a complete checkpoint, the run finishes, and its final checkpoint, best/ and metrics
equal those of an uninterrupted run."""

from __future__ import annotations

import subprocess
import sys

import pytest
from kill_driver import run_driver
from kill_trials import Trial

from ernie_style.finetune.state import recover_best

TRIALS = [{"seed": 1, "faults": ["random", "checkpoint", "best"], "window": 0.6}]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    """The reference run and the trial (one driver process)."""
    root = tmp_path_factory.mktemp("kill_finetune")
    return run_driver({"command": "finetune", "root": str(root), "trials": TRIALS}, root)


def test_killed_finetune_resumes_to_the_uninterrupted_run(results):
    trial = Trial.from_dict(results["trials"][0])
    assert trial.problems == []
    assert trial.survived and trial.data_lost == 0
    random_kill, checkpoint_kill, best_kill = trial.kills
    assert random_kill.killed
    assert checkpoint_kill.killed and checkpoint_kill.mid_write, checkpoint_kill
    if best_kill.killed:  # the last resumed run may have no better dev score left to save
        assert best_kill.mid_write and best_kill.detail.startswith(".best.tmp-"), best_kill


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_recover_best_puts_back_the_copy_a_killed_save_moved_aside(tmp_path):
    pid = _dead_pid()
    old, tmp = tmp_path / f".best.old-{pid}", tmp_path / f".best.tmp-{pid}"
    old.mkdir()
    (old / "best.json").write_text("{}")
    tmp.mkdir()
    recover_best(tmp_path)  # killed between its two renames: no best/
    assert (tmp_path / "best" / "best.json").is_file()
    assert not old.exists() and not tmp.exists()
    old.mkdir()
    recover_best(tmp_path)  # killed after installing the new best/: drop the old copy
    assert not old.exists() and (tmp_path / "best").is_dir()
