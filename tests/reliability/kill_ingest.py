"""The kill trials of `ingest` (see kill_trials.py).

Batch A then B are ingested in a fresh copy of a template work dir, and one ingest per trial is
killed: at every rename of ingest A (just before and just after each; and just after each,
with B ingested before A is re-run), and at seeded random moments of A or B. Right after the
kill no labeled row may be lost or duplicated and no id may have left the pool unlabelled;
re-running the killed ingest (or, in some trials, the other batch first) must then give the
labeled set, pool and loop state of uninterrupted ingests.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from kill_faults import Kill, call_forked
from kill_runs import Launcher, fork_launcher, preload, run_to_end
from kill_trials import KillCase, Trial, run_trial

from ernie_style.testing import ROOT

ACTIVE_LEARNING = ROOT / "data" / "active_learning" / "wnut16"
INGEST_CONFIG = ROOT / "configs" / "active_learning" / "wnut16_pos.yaml"
INGEST_TASKS = ("ner", "pos")
INGEST_BATCHES = ("batch_a.jsonl", "batch_b.jsonl")


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def ingest_setup(root: Path) -> Path:
    """A template work dir: pool.jsonl (60 WNUT-16 tweets), labeled/ (the 40-tweet seed set),
    config.yaml (the shipped WNUT-16 config, absolute data paths) and two annotated batches
    (oracle labels): A = pool rows 0-23 (selected, round "kill-a"), B = rows 18-41 (a manual
    batch; 6 ids overlap A)."""
    template = root / "ingest-template"
    (template / "labeled").mkdir(parents=True)
    for task in INGEST_TASKS:
        shutil.copy(ACTIVE_LEARNING / "seed" / f"{task}.jsonl", template / "labeled")
    lines = (ACTIVE_LEARNING / "pool.jsonl").read_text(encoding="utf-8").splitlines(True)
    (template / "pool.jsonl").write_text("".join(lines[:60]), encoding="utf-8")
    pool = [json.loads(line) for line in lines[:60]]
    truth = {
        t: {r["id"]: r["tags"] for r in _jsonl(ACTIVE_LEARNING / "oracle" / f"{t}.jsonl")}
        for t in INGEST_TASKS
    }

    def annotated(rows: list[dict[str, Any]], meta: dict[str, Any] | None) -> str:
        out = []
        for rank, row in enumerate(rows):
            line = row | {"labels": {t: truth[t][row["id"]] for t in INGEST_TASKS}}
            if meta is not None:
                line["selection"] = meta | {"rank": rank}
            out.append(json.dumps(line) + "\n")
        return "".join(out)

    meta = {"batch": "kill-a", "strategy": "random", "budget": 24, "tasks": list(INGEST_TASKS)}
    (template / INGEST_BATCHES[0]).write_text(annotated(pool[:24], meta), encoding="utf-8")
    (template / INGEST_BATCHES[1]).write_text(annotated(pool[18:42], None), encoding="utf-8")
    config = yaml.safe_load(INGEST_CONFIG.read_text(encoding="utf-8"))
    for task in config["tasks"]:
        task["data"] = {split: str(ROOT / path) for split, path in task["data"].items()}
    (template / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return template


def ingest_argv(batch: str) -> list[str]:
    """`ingest` of one batch, run in the work dir (relative paths: comparable states)."""
    return [
        "ingest", "--batch", batch, "--labeled", "labeled", "--tasks", ",".join(INGEST_TASKS),
        "--config", "config.yaml", "--pool", "pool.jsonl",
    ]  # fmt: skip


def ingest_snapshot(work: Path) -> dict[str, Any]:
    """The labeled files and pool (bytes), the loop state without timestamps, and leftovers."""
    state_path = work / "labeled" / "loop_state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else None
    for entry in (state or {}).get("rounds", []):
        entry.pop("ingested_at", None)
        entry.pop("selected_at", None)
    known = {f"{t}.jsonl" for t in INGEST_TASKS} | {"loop_state.json", ".ernie-style.lock"}
    return {
        "labeled": {t: (work / "labeled" / f"{t}.jsonl").read_text() for t in INGEST_TASKS},
        "pool": (work / "pool.jsonl").read_text(),
        "state": state,
        "leftovers": sorted(
            [p.name for p in (work / "labeled").iterdir() if p.name not in known]
            + [p.name for p in work.glob(".pool.jsonl.*")]
        ),
    }


def check_ingest_invariants(work: Path, template: Path) -> tuple[list[str], int]:
    """At any moment (e.g. right after a kill): no labeled row is lost (the seed rows stay, in
    place) or duplicated, every labeled id comes from the seed or a batch, and no pool id has
    left the pool without being labelled for every task. Returns (problems, rows affected)."""
    problems, bad = [], 0
    batch_ids = {r["id"] for b in INGEST_BATCHES for r in _jsonl(template / b)}
    labeled: dict[str, set[str]] = {}
    for task in INGEST_TASKS:
        seed = (template / "labeled" / f"{task}.jsonl").read_text()
        text = (work / "labeled" / f"{task}.jsonl").read_text()
        if not text.startswith(seed):
            problems.append(f"{task}: seed rows changed or lost")
            bad += 1
        ids = [r["id"] for r in _jsonl(work / "labeled" / f"{task}.jsonl")]
        dups = len(ids) - len(set(ids))
        if dups:
            problems.append(f"{task}: {dups} duplicated rows")
            bad += dups
        seed_ids = {r["id"] for r in _jsonl(template / "labeled" / f"{task}.jsonl")}
        strays = set(ids) - seed_ids - batch_ids
        if strays:
            problems.append(f"{task}: unknown ids {sorted(strays)[:3]}")
            bad += len(strays)
        labeled[task] = set(ids)
    pool_before = {r["id"] for r in _jsonl(template / "pool.jsonl")}
    pool_now = {r["id"] for r in _jsonl(work / "pool.jsonl")}
    gone = pool_before - pool_now
    unlabeled = {i for i in gone if not all(i in labeled[t] for t in INGEST_TASKS)}
    if unlabeled:
        problems.append(f"{len(unlabeled)} ids left the pool without being labelled")
        bad += len(unlabeled)
    return problems, bad


def compare_ingest(
    work: Path, reference: Mapping[str, Any], exact: bool = True
) -> tuple[list[str], int]:
    """The finished labeled set, pool and state against the uninterrupted reference: byte for
    byte (`exact`), or as sets (when a kill made the batches land in another order)."""
    got = ingest_snapshot(work)
    problems, lost = [], 0
    for task in INGEST_TASKS:
        a, b = got["labeled"][task].splitlines(), reference["labeled"][task].splitlines()
        missing, extra = set(b) - set(a), len(a) - len(set(a)) + len(set(a) - set(b))
        if missing or extra:
            problems.append(f"{task}: {len(missing)} rows lost, {extra} duplicated or unexpected")
            lost += len(missing) + extra
        elif exact and a != b:
            problems.append(f"{task}: rows in another order than the reference")
    a, b = got["pool"].splitlines(), reference["pool"].splitlines()
    if set(a) != set(b) or len(a) != len(b):
        problems.append(f"pool: {len(set(b) - set(a))} missing, {len(set(a) - set(b))} extra ids")
        lost += len(set(a) ^ set(b))
    if got["leftovers"]:
        problems.append(f"leftover files {got['leftovers']}")
    state, want = got["state"], reference["state"]
    if exact and state != want:
        problems.append("loop state differs from the reference")
    elif not exact:
        rounds = {r["batch"]: r for r in (state or {}).get("rounds", [])}
        for entry in want["rounds"]:
            if entry["batch"] not in rounds:
                problems.append(f"loop state lacks the round of batch {entry['batch']}")
        for task in INGEST_TASKS:
            ingested = [i for r in rounds.values() for i in r["ingested"].get(task, [])]
            expected = {i for r in want["rounds"] for i in r["ingested"].get(task, [])}
            if sorted(ingested) != sorted(expected):
                problems.append(f"loop state: ids ingested for {task} differ from the reference")
        if state and state["labeled"] != want["labeled"]:
            problems.append("loop state: labeled counts differ from the reference")
    return problems, lost


class IngestCase(KillCase):
    """One ingest trial in its own copy of the template: `plan` says which batch is killed
    ("batch": 0 or 1), how ("crash_at" a rename, or after "delay" seconds) and in which
    "order" the batches are ingested afterwards ("same", or "other": B first)."""

    command = "ingest"

    def __init__(
        self, work: Path, log: Path, template: Path, reference: Mapping[str, Any], plan: dict
    ) -> None:
        self.work, self.log, self.template = work, log, template
        self.reference, self.plan = reference, plan
        shutil.copytree(template, work)

    def setup(self, faults: Sequence[str], launch: Launcher) -> None:
        """Ingest A first when B is the one killed."""
        if self.plan["batch"] == 1:
            run_to_end(launch, ingest_argv(INGEST_BATCHES[0]), self.log, cwd=self.work)

    def kill(self, number: int, fault: str, rng: random.Random, launch: Launcher) -> Kill:
        """The planned kill of the planned batch."""
        batch = self.plan["batch"]
        kill, _ = call_forked(
            ingest_argv(INGEST_BATCHES[batch]),
            cwd=self.work,
            log=self.log,
            delay=self.plan.get("delay"),
            crash_at=self.plan.get("crash_at"),
        )
        kill.detail += f" of batch {'AB'[batch]}; then {self.plan['order']} order"
        return kill

    def after_kill(self, number: int, fault: str, kill: Kill) -> tuple[list[str], int]:
        """The invariants of `check_ingest_invariants`."""
        problems, bad = check_ingest_invariants(self.work, self.template)
        return [f"after the kill: {p}" for p in problems], bad

    def finish(self, launch: Launcher) -> None:
        """Ingest the killed batch and those after it (or B, then A)."""
        order = list(INGEST_BATCHES[self.plan["batch"] :])
        if self.plan["order"] == "other":
            order = [INGEST_BATCHES[1], INGEST_BATCHES[0]]
        for batch in order:
            run_to_end(launch, ingest_argv(batch), self.log, cwd=self.work)

    def compare(self) -> tuple[list[str], int]:
        """The reference's outcome: exactly when the batches came in the same order."""
        return compare_ingest(self.work, self.reference, exact=self.plan["order"] == "same")


def ingest_trials(
    root: Path,
    seed: int,
    random_trials: int,
    crash_points: bool = True,
) -> list[Trial]:
    """Ingest batch A then B in a fresh copy of the template, killing one ingest per trial:
    at every rename point of ingest A (`crash_points`; see the module docstring) and at
    `random_trials` seeded random moments (within the measured duration of an uninterrupted
    ingest) of A or B. Runs in forked children: call from a process that may fork (see
    kill_runs.py)."""
    preload("ingest")
    template = ingest_setup(root)
    ref_dir = root / "ingest-reference"
    shutil.copytree(template, ref_dir)
    durations, renames = [], 0
    for batch in INGEST_BATCHES:
        begin = time.monotonic()
        _, count = call_forked(ingest_argv(batch), cwd=ref_dir, log=root / "ingest-ref.log")
        durations.append(time.monotonic() - begin)
        renames = renames or count
    reference = ingest_snapshot(ref_dir)
    rng = random.Random(seed)
    plans: list[dict[str, Any]] = []
    if crash_points:
        for k in range(1, renames + 1):
            for when, order in (("before", "same"), ("after", "same"), ("after", "other")):
                plans.append({"batch": 0, "crash_at": (k, when), "order": order})
    for _ in range(random_trials):
        batch = rng.randrange(2)
        plans.append(
            {
                "batch": batch,
                "delay": rng.uniform(0, durations[batch]),
                "order": rng.choice(["same", "other"]) if batch == 0 else "same",
            }
        )
    trials = []
    for number, plan in enumerate(plans):
        name = f"ingest-{seed}-{number}"
        case = IngestCase(root / name, root / f"{name}.log", template, reference, plan)
        fault = "rename" if "crash_at" in plan else "random"
        trials.append(run_trial(case, seed * 1000 + number, [fault], fork_launcher))
    return trials
