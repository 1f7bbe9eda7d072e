"""SIGKILL `pretrain` at a random moment of training and in the middle of a checkpoint write
(once or twice per trial): `--resume auto` always finds a complete checkpoint, the run
finishes, and its final weights and per-step losses equal those of an uninterrupted run.

The trials run in a driver process (`kill_driver.run_driver`) that forks each run from
a copy with the modules already imported; `tests/reliability/soak.py` runs many more."""

from __future__ import annotations

import pytest
from kill_driver import run_driver
from kill_trials import Trial

#: 3 trials: a kill mid-checkpoint-write, a kill at a random moment of training, and both in
#: one trial (the second kill hits the resumed run). Random delays are drawn within 60% of the
#: reference run's measured training time, so that they land before the run ends.
TRIALS = [
    {"seed": 1, "faults": ["checkpoint"], "window": 0.6},
    {"seed": 2, "faults": ["random"], "window": 0.6},
    {"seed": 3, "faults": ["random", "checkpoint"], "window": 0.6},
]


@pytest.fixture(scope="module")
def results(small_corpus, tmp_path_factory) -> dict:
    """The reference run and the 3 trials (one driver process for all of them)."""
    root = tmp_path_factory.mktemp("kill_pretrain")
    job = {"command": "pretrain", "root": str(root), "corpus": str(small_corpus)}
    return run_driver(job | {"trials": TRIALS}, root)


@pytest.mark.parametrize("index", range(len(TRIALS)), ids=["+".join(t["faults"]) for t in TRIALS])
def test_killed_pretrain_resumes_to_the_uninterrupted_weights(results, index):
    trial = Trial.from_dict(results["trials"][index])
    assert trial.problems == []
    assert trial.survived and trial.data_lost == 0
    assert trial.kills[0].killed, f"the first kill came after the run ended: {trial.kills[0]}"
    for fault, kill in zip(TRIALS[index]["faults"], trial.kills, strict=True):
        if fault == "checkpoint":
            assert kill.killed and kill.mid_write, kill  # the .tmp-step dir was left behind
            assert kill.detail.startswith(".tmp-step-")
