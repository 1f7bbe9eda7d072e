"""SIGKILL `prepare` at random moments of the build and at the renames that install the output
(new, and replacing an older complete output): the output is then absent or complete and
loadable, never a partial corpus a later run would take for complete; a re-run gives the
uninterrupted run's corpus and leaves no temp dirs."""

from __future__ import annotations

import pytest
from kill_driver import run_driver
from kill_trials import Trial

TRIALS = [
    {"seed": 1, "fault": "building"},  # a random moment after the temp dir appeared
    {"seed": 2, "fault": "replace"},  # the same, over an existing complete output
    # the moment the old output was moved aside and the new one not yet in place
    {"seed": 3, "fault": "rename-replace", "crash_at": [1, "after"]},
    # the new output installed, the old copy not yet deleted
    {"seed": 4, "fault": "rename-replace", "crash_at": [2, "after"]},
]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    """The reference prepare and the trials (one driver process for all of them)."""
    root = tmp_path_factory.mktemp("kill_prepare")
    return run_driver({"command": "prepare", "root": str(root), "trials": TRIALS}, root)


def _name(trial: dict) -> str:
    return "-".join([trial["fault"], *map(str, trial.get("crash_at", []))])


@pytest.mark.parametrize("index", range(len(TRIALS)), ids=[_name(t) for t in TRIALS])
def test_killed_prepare_leaves_no_partial_output_and_reruns_to_the_same_corpus(results, index):
    trial = Trial.from_dict(results["trials"][index])
    assert trial.problems == []
    assert trial.survived and trial.data_lost == 0
    if "crash_at" in TRIALS[index]:
        assert trial.kills[0].killed
