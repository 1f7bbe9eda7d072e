"""SIGKILL `ingest` just before and just after each of its file renames (every crash point), and
at seeded random moments: at every moment the labeled set has lost or duplicated no row and
no id has left the pool unlabelled; re-running ingest completes the merge, and the labeled
set, pool and loop state then equal those of uninterrupted ingests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kill_driver import run_driver
from kill_trials import Trial

RANDOM_TRIALS = 6


@pytest.fixture(scope="module")
def trials(tmp_path_factory) -> list[Trial]:
    """All crash points of ingesting batch A, and random kills of A or B (one driver)."""
    root = tmp_path_factory.mktemp("kill_ingest")
    job = {"command": "ingest", "root": str(root), "seed": 7, "random_trials": RANDOM_TRIALS}
    return [Trial.from_dict(t) for t in run_driver(job, root)["trials"]]


def test_every_crash_point_and_random_kill_loses_and_duplicates_nothing(trials):
    crash = [t for t in trials if t.fault == "rename"]
    # journal, ner.jsonl, pos.jsonl, pool.jsonl, loop_state.json; before, after, after + B first
    assert len(crash) == 5 * 3
    assert all(t.kills[0].killed for t in crash)
    assert len(trials) == len(crash) + RANDOM_TRIALS
    failed = {t.kills[0].detail: t.problems for t in trials if t.problems}
    assert failed == {}
    assert all(t.survived and t.data_lost == 0 for t in trials)


def leave_pending_journal(labeled: Path, batch_path: Path) -> None:
    """The state an ingest leaves when it dies right after writing its journal (it adds id
    `x1` to `ner` as round `bx`): nothing else has changed yet."""
    from ernie_style.active_learning.loop import JOURNAL_FILE

    journal = {
        "version": 1, "batch": "x.jsonl", "batch_path": str(batch_path), "stamp": "t",
        "labeled": {"ner": [{"id": "x1", "tokens": ["a"], "tags": ["O"]}], "pos": []},
        "added": {"ner": ["x1"], "pos": []}, "counts": {"ner": 41, "pos": 40},
        "pool": None, "remove": [], "rounds": [{"meta": {"batch": "bx"}, "ids": ["x1"]}],
        "report": {"added": {"ner": 1, "pos": 0}, "already_labeled": 0, "removed_from_pool": 0},
    }  # fmt: skip
    (labeled / JOURNAL_FILE).write_text(json.dumps(journal))


def test_a_killed_ingest_is_completed_by_the_next_one(tmp_path):
    """In process: an ingest journal left behind is replayed (once) by the next ingest."""
    from kill_ingest import ingest_setup

    from ernie_style.active_learning.loop import JOURNAL_FILE, ingest, load_state
    from ernie_style.active_learning.pool import TaskSpec
    from ernie_style.config import load_config
    from ernie_style.finetune.config import FinetuneConfig
    from ernie_style.finetune.loading import task_labels

    work = ingest_setup(tmp_path)
    config = load_config(FinetuneConfig, work / "config.yaml")
    specs = {
        t.name: TaskSpec.of(t, config, task_labels(t, config.spacy_model)) for t in config.tasks
    }
    labeled = work / "labeled"
    seed_rows = {t: (labeled / f"{t}.jsonl").read_text() for t in specs}
    leave_pending_journal(labeled, work / "x.jsonl")
    (labeled / ".ner.jsonl.tmp-999999999").write_text("half")  # a dead writer's temp file
    report = ingest(work / "batch_a.jsonl", labeled, specs, work / "pool.jsonl")
    assert report.added == {"ner": 24, "pos": 24}
    assert not (labeled / JOURNAL_FILE).exists()
    assert not (labeled / ".ner.jsonl.tmp-999999999").exists()
    ner = (labeled / "ner.jsonl").read_text()
    assert ner.startswith(seed_rows["ner"]) and ner.count('"id": "x1"') == 1
    state = load_state(labeled)
    assert [r["batch"] for r in state["rounds"]] == ["bx", "kill-a"]
    assert state["rounds"][0]["ingested"] == {"ner": ["x1"]}
    assert state["labeled"] == {"ner": 65, "pos": 64}


def test_select_first_completes_a_killed_ingest(tmp_path):
    """`select --labeled` replays a pending ingest journal, so its rows are not offered again."""
    from kill_ingest import ingest_setup

    from ernie_style.active_learning.loop import (
        JOURNAL_FILE,
        finish_interrupted_ingest,
        labeled_ids,
    )

    labeled = ingest_setup(tmp_path) / "labeled"
    assert not finish_interrupted_ingest(labeled)  # nothing pending
    leave_pending_journal(labeled, tmp_path / "x.jsonl")
    assert finish_interrupted_ingest(labeled)
    assert not (labeled / JOURNAL_FILE).exists()
    assert "x1" in labeled_ids(labeled, ["ner"])
