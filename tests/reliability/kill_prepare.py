"""The kill trials of `prepare` (see kill_trials.py).

Faults: "anytime" (a random moment since the launch), "building" (a random moment after its temp
dir appeared), "replace" (the same over an existing complete output made with other settings),
"rename" / "rename-replace" (just before or after its `crash_at = (k, "before"|"after")`
rename, where the output is installed). After the kill the output must be absent or complete
(never a partial corpus a later run would take for complete); a re-run must give the reference
corpus and leave no temp dirs.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kill_faults import Kill, call_forked, new_entry
from kill_runs import Launcher, fork_launcher, run_to_end
from kill_trials import KillCase, Trial, run_trial, stale_entries, timed_run

from ernie_style.testing.pretrain import sample_subset


def prepare_setup(root: Path, documents: int = 100, paragraphs: int = 12) -> Path:
    """The input of the prepare trials: sample Wikipedia articles (first paragraphs each)."""
    return sample_subset(root / "subset.jsonl", documents, paragraphs)


def prepare_argv(source: Path, output: Path, vocab: int = 1500) -> list[str]:
    """`prepare` of the trials: regex annotation, a WordPiece tokenizer trained on the corpus."""
    return [
        "prepare", "--input", str(source), "--output", str(output), "--annotator", "none",
        "--train-tokenizer", str(vocab), "--no-progress",
    ]  # fmt: skip


def prepare_reference(root: Path, source: Path, launch: Launcher) -> dict[str, Any]:
    """Prepare uninterrupted; returns the output and measured durations (total; from the temp
    dir's appearance to the end)."""
    output = root / "prep-reference" / "prepared"
    output.parent.mkdir(parents=True, exist_ok=True)
    building, _ = new_entry(output.parent, ".prepared.prepare-tmp-")
    log = root / "prep-reference.log"
    total, build = timed_run(launch, prepare_argv(source, output), log, building)
    return {"output": str(output), "seconds": total, "build_seconds": build}


def corpus_differences(got: Path, expected: Path) -> tuple[list[str], int]:
    """How a prepared corpus differs from the reference: (problems, document rows that differ
    or are missing)."""
    from ernie_style.corpus.prepared import load_corpus, load_summary, read_fingerprint

    problems = []
    record, want = read_fingerprint(got), read_fingerprint(expected)
    if record is None:
        return [f"{got} is not a complete prepare output"], -1
    if record["fingerprint"] != (want or {}).get("fingerprint"):
        problems.append("fingerprint differs from the reference")
    a, b = load_corpus(got), load_corpus(expected)
    rows_a, rows_b = a.to_list(), b.to_list()
    lost = sum(x != y for x, y in zip(rows_a, rows_b, strict=False)) + abs(len(a) - len(b))
    if lost:
        problems.append(f"{lost} document rows differ from the reference")
    summary_a, summary_b = load_summary(got), load_summary(expected)
    summary_a.pop("inputs"), summary_b.pop("inputs")
    if summary_a != summary_b:
        problems.append("prepare_summary.json differs from the reference")
    # The tokenizer is compared by size only: WordPiece training in `tokenizers` is not
    # reproducible between processes (huggingface/tokenizers#1794: ids, and on count ties even
    # merges, follow hash-map order), so even two uninterrupted runs differ there.
    from ernie_style.tokenizer import load_tokenizer

    try:
        size_a = len(load_tokenizer(got / "tokenizer"))
    except (OSError, ValueError) as error:
        problems.append(f"tokenizer/ does not load: {error}")
    else:
        if size_a != len(load_tokenizer(expected / "tokenizer")):
            problems.append("tokenizer/ has another vocabulary size than the reference")
    return problems, lost


class PrepareCase(KillCase):
    """One prepare trial: one kill of `fault`, in prepare-SEED/ under the root."""

    command = "prepare"

    def __init__(
        self,
        root: Path,
        source: Path,
        reference: Mapping[str, Any],
        seed: int,
        crash_at: tuple[int, str] | None = None,
    ) -> None:
        self.output = root / f"prepare-{seed}" / "prepared"
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.log = root / f"prepare-{seed}.log"
        self.source, self.reference, self.crash_at = source, reference, crash_at
        self.argv = prepare_argv(source, self.output)
        self.old: dict[str, Any] | None = None

    def setup(self, faults: Sequence[str], launch: Launcher) -> None:
        """For the replace faults: an older complete output (another vocabulary size)."""
        from ernie_style.corpus.prepared import read_fingerprint

        if faults[0] in ("replace", "rename-replace"):
            run_to_end(launch, prepare_argv(self.source, self.output, vocab=1000), self.log)
            self.old = read_fingerprint(self.output)

    def kill(self, number: int, fault: str, rng: random.Random, launch: Launcher) -> Kill:
        """The kill of `fault` (see the module docstring)."""
        if fault.startswith("rename"):
            kill, _ = call_forked(self.argv, log=self.log, crash_at=self.crash_at)
            kill.fault = fault
            return kill
        if fault == "anytime":
            return self.random_kill(launch, self.argv, rng, fault, self.reference["seconds"])
        if fault in ("building", "replace"):
            building, _ = new_entry(self.output.parent, ".prepared.prepare-tmp-")
            high = self.reference["build_seconds"]
            return self.random_kill(launch, self.argv, rng, fault, high, start_when=building)
        raise ValueError(f"unknown prepare fault {fault!r}")

    def after_kill(self, number: int, fault: str, kill: Kill) -> tuple[list[str], int]:
        """The output is absent, or complete with the reference's (or the replaced output's)
        fingerprint, and loads."""
        from ernie_style.corpus.prepared import load_corpus, read_fingerprint

        problems = []
        if fault.startswith("rename") and not kill.killed:
            problems.append(f"the run made fewer than {self.crash_at} renames")
        if not self.output.exists():
            return problems, 0
        record = read_fingerprint(self.output)
        if record is None:
            return [*problems, f"after the kill {self.output} exists but is not complete"], 0
        allowed = {read_fingerprint(Path(self.reference["output"]))["fingerprint"]}
        allowed |= {self.old["fingerprint"]} if self.old else set()
        if record["fingerprint"] not in allowed:
            problems.append("after the kill the output has an unexpected fingerprint")
        try:
            load_corpus(self.output)
        except ValueError as error:
            problems.append(f"after the kill the output does not load: {error}")
        return problems, 0

    def finish(self, launch: Launcher) -> None:
        """Prepare again."""
        run_to_end(launch, self.argv, self.log)

    def compare(self) -> tuple[list[str], int]:
        """The reference corpus, and no temp dirs left."""
        problems, lost = corpus_differences(self.output, Path(self.reference["output"]))
        stale = stale_entries(
            self.output.parent, ".prepared.prepare-tmp-*", ".prepared.prepare-old-*"
        )
        if stale:
            problems.append(f"stale temp dirs after the re-run: {stale}")
        return problems, max(lost, 0) if lost >= 0 else 1


def prepare_trial(
    root: Path,
    source: Path,
    reference: Mapping[str, Any],
    seed: int,
    fault: str,
    launch: Launcher = fork_launcher,
    crash_at: tuple[int, str] | None = None,
) -> Trial:
    """Kill `prepare` once with `fault` (see the module docstring), check the output, prepare
    again and compare with the reference."""
    return run_trial(PrepareCase(root, source, reference, seed, crash_at), seed, [fault], launch)
