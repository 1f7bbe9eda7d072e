"""The kill trials of the training commands, `pretrain` and `finetune` (see kill_trials.py).

Faults: "random" (a random moment of training: after train_loss.csv grew), "anytime" (a random
moment since the launch), "checkpoint" (in the middle of a checkpoint write) and, fine-tuning
only, "best" (in the middle of writing best/). Each kill hits the next run, which resumes with
`--resume auto`; then a last resumed run goes to the end, and its final checkpoint (and
fine-tuning's best/ and metrics) must equal the uninterrupted reference run's.
"""

from __future__ import annotations

import json
import random
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from kill_faults import Kill, file_grew, kill_during_write
from kill_runs import Launcher, fork_launcher, run_to_end
from kill_trials import KillCase, Trial, run_trial, stale_entries, tensors_differ, timed_run

from ernie_style.testing.finetune import make_encoder_dir, shipped_tasks
from ernie_style.testing.finetune import write_config as write_finetune_config
from ernie_style.testing.pretrain import make_small_corpus, step_losses
from ernie_style.testing.pretrain import write_config as write_pretrain_config

#: A 14-step run over 3 stages; a checkpoint every 3 steps and at stage ends; 3 kept.
PRETRAIN_TASKS = {
    "knowledge_masking": {"budget": 6},
    "capitalization": {"budget": 4},
    "sentence_distance": {"budget": 4},
}
PRETRAIN_STEPS = 14


def pretrain_config(path: Path, corpus: Path, output: Path) -> Path:
    """The tiny pretraining config every pretrain trial runs."""
    return write_pretrain_config(
        path, corpus, output, tasks=PRETRAIN_TASKS, checkpoint_every=3, keep_checkpoints=3,
        eval_every=100, log_every=2,
    )  # fmt: skip


def finetune_setup(root: Path) -> dict[str, Any]:
    """A tiny encoder and two small shipped tasks (sentiment; wiki_ranking cut to 48/16/16)."""
    encoder = make_encoder_dir(root / "encoder")
    tasks = shipped_tasks("sentiment", "wiki_ranking")
    sizes = {"train": 48, "dev": 16, "test": 16}
    for split, path in list(tasks[1]["data"].items()):
        cut = root / f"wiki_ranking_{split}.jsonl"
        lines = Path(path).read_text(encoding="utf-8").splitlines(keepends=True)
        cut.write_text("".join(lines[: sizes[split]]), encoding="utf-8")
        tasks[1]["data"][split] = str(cut)
    tasks[1]["batch_size"] = 8
    return {"encoder": str(encoder), "tasks": tasks}


def finetune_config(path: Path, setup: Mapping[str, Any], output: Path) -> Path:
    """The tiny fine-tuning config every finetune trial runs (fp32: exact comparisons)."""
    return write_finetune_config(
        path, Path(setup["encoder"]), output, setup["tasks"], epochs=2, checkpoint_every=3,
        keep_checkpoints=3, log_every=2,
    )  # fmt: skip


def check_checkpoints_after_kill(checkpoints: Path) -> list[str]:
    """The newest checkpoint directory (if any) is complete, and `--resume auto` picks it."""
    from ernie_style.train.checkpoint import find_resumable, list_checkpoints, verify

    found = list_checkpoints(checkpoints)
    if not found:
        return []
    problems = []
    reason = verify(found[0])
    if reason is not None:
        problems.append(f"newest checkpoint {found[0].name} is incomplete: {reason}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        chosen = find_resumable(checkpoints)
    if chosen != found[0]:
        problems.append(f"--resume auto would pick {chosen}, not the newest {found[0].name}")
    return problems


def check_best_after_kill(output: Path) -> list[str]:
    """`best/` is absent or complete (weights load, best.json parses)."""
    from safetensors.torch import load_file

    best = output / "best"
    if not best.exists():
        return []
    try:
        load_file(str(best / "model.safetensors"))
        json.loads((best / "best.json").read_text(encoding="utf-8"))
    except Exception as error:  # any failure means a half-written best/
        return [f"best/ is incomplete after the kill: {error}"]
    return []


class TrainingCase(KillCase):
    """One trial of a training command: its config, run dir and log are named COMMAND-SEED
    under the trial root; `inputs` are what its config is made from."""

    #: The name of the reference run's dir, config and log under the root.
    reference_name: ClassVar[str]
    #: The write faults: fault -> (folder under the run dir, its temp entries' prefix, the
    #: Kill's fault, among how many writes of the first run the one to hit is drawn).
    writes: ClassVar[dict[str, tuple[str, str, str, int]]] = {
        "checkpoint": ("checkpoints", ".tmp-step-", "checkpoint-write", 3)
    }
    #: (folder under the run dir, pattern) of temp entries no finished run may leave.
    stale: ClassVar[tuple[tuple[str, str], ...]] = (
        ("checkpoints", ".tmp-*"),
        ("checkpoints", ".trash-*"),
        ("checkpoints", ".step-*"),
    )
    #: Weight files (under the run dir) that must equal the reference's, besides the final
    #: checkpoint's.
    weights: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self, root: Path, inputs: Any, reference: Mapping[str, Any], seed: int, window: float
    ) -> None:
        name = f"{self.command}-{seed}"
        self.work = root / name
        self.config = self.write_config(root / f"{name}.yaml", inputs, self.work)
        self.log = root / f"{name}.log"
        self.checkpoints = self.work / "checkpoints"
        self.reference, self.ref = reference, Path(reference["run"])
        self.window = window

    @staticmethod
    def write_config(path: Path, inputs: Any, output: Path) -> Path:
        """Write the trial config to `path`, for a run in `output`."""
        raise NotImplementedError

    @staticmethod
    def inputs(root: Path) -> Any:
        """Make what the config needs (a corpus, an encoder) under `root`."""
        raise NotImplementedError

    @classmethod
    def make_reference(cls, root: Path, inputs: Any, launch: Launcher) -> dict[str, Any]:
        """Run the trial config uninterrupted; returns its run dir and measured durations
        (total, and from its first training step, when train_loss.csv appears, to the end)."""
        run = root / cls.reference_name
        config = cls.write_config(root / f"{cls.reference_name}.yaml", inputs, run)
        csv = run / "train_loss.csv"
        log = root / f"{cls.reference_name}.log"
        total, train = timed_run(launch, [cls.command, "--config", str(config)], log, csv.exists)
        return {"run": str(run), "seconds": total, "train_seconds": train}

    def argv(self, resume: bool) -> list[str]:
        """The command line of a run (resuming: `--resume auto`)."""
        resuming = ["--resume", "auto"] if resume else []
        return [self.command, "--config", str(self.config), *resuming]

    def kill(self, number: int, fault: str, rng: random.Random, launch: Launcher) -> Kill:
        """Random delays are drawn within `window` times the reference's measured time."""
        argv = self.argv(resume=number > 0)
        if fault in self.writes:
            # the first run writes several: kill in a random one of the first few; a resumed
            # run may have only one left: kill in its first
            folder, prefix, label, choices = self.writes[fault]
            skip = rng.randrange(choices) if number == 0 and choices > 1 else 0
            return kill_during_write(
                launch, argv, self.work / folder, prefix, skip=skip, fault=label, log=self.log
            )
        if fault == "random":
            high = self.window * self.reference["train_seconds"]
            grew = file_grew(self.work / "train_loss.csv")
            return self.random_kill(launch, argv, rng, fault, high, start_when=grew)
        if fault == "anytime":
            return self.random_kill(
                launch, argv, rng, fault, self.window * self.reference["seconds"]
            )
        raise ValueError(f"unknown {self.command} fault {fault!r}")

    def after_kill(self, number: int, fault: str, kill: Kill) -> tuple[list[str], int]:
        """A write fault landed mid-write; the newest checkpoint is complete and picked."""
        problems = []
        if fault in self.writes and kill.killed and not kill.mid_write:
            problems.append(f"kill {number + 1} missed the write ({kill})")
        problems += check_checkpoints_after_kill(self.checkpoints)
        return problems + self.check_after_kill(), 0

    def check_after_kill(self) -> list[str]:
        """Further checks right after a kill."""
        return []

    def finish(self, launch: Launcher) -> None:
        """Resume to the end."""
        run_to_end(launch, self.argv(resume=True), self.log)

    def expected_checkpoint(self) -> Path:
        """The reference run's final checkpoint."""
        raise NotImplementedError

    def compare(self) -> tuple[list[str], int]:
        """The final checkpoint is the reference's (complete, the same tensors), no temp dirs
        are left, and `compare_outputs` holds."""
        from ernie_style.train.checkpoint import list_checkpoints, verify

        newest, expected = list_checkpoints(self.checkpoints), self.expected_checkpoint()
        if not newest or newest[0].name != expected.name:
            return [f"newest checkpoint {newest[:1]} is not {expected.name}"], 1
        problems, lost = [], 0
        reason = verify(newest[0])
        if reason is not None:
            problems.append(f"final checkpoint incomplete: {reason}")
        stale = [
            name
            for where, pattern in self.stale
            for name in stale_entries(self.work / where, pattern)
        ]
        if stale:
            problems.append(f"stale temp dirs after the resumed run: {stale}")
        differ = tensors_differ(newest[0] / "model.safetensors", expected / "model.safetensors")
        for weights in self.weights:
            differ += tensors_differ(self.work / weights, self.ref / weights)
        if differ:
            problems.append(f"{len(differ)} tensors differ from the reference: {differ[:3]}")
            lost = len(differ)
        return problems + self.compare_outputs(), lost

    def compare_outputs(self) -> list[str]:
        """Further outputs that must equal the reference's."""
        return []


class PretrainCase(TrainingCase):
    """`pretrain` of `pretrain_config` over a small prepared corpus (the inputs)."""

    command = "pretrain"
    reference_name = "reference"
    write_config = staticmethod(pretrain_config)
    inputs = staticmethod(make_small_corpus)

    def expected_checkpoint(self) -> Path:
        """step-14 of the reference run."""
        from ernie_style.train.checkpoint import step_dir_name

        return self.ref / "checkpoints" / step_dir_name(PRETRAIN_STEPS)

    def compare_outputs(self) -> list[str]:
        """The per-step losses equal the reference's bit for bit (the CSV keeps full
        precision)."""
        got, want = step_losses(self.work), step_losses(self.ref)
        wrong = [k for k in want if k not in got or got[k] != want[k]]
        if wrong or set(got) != set(want):
            return [f"per-step losses differ from the reference at {sorted(wrong)[:3]}"]
        return []


class FinetuneCase(TrainingCase):
    """`finetune` of `finetune_config` over `finetune_setup` (the inputs)."""

    command = "finetune"
    reference_name = "ft-reference"
    writes = TrainingCase.writes | {"best": (".", ".best.", "best-write", 1)}
    stale = (*TrainingCase.stale, (".", ".best.*"))
    weights = ("best/model.safetensors",)
    write_config = staticmethod(finetune_config)
    inputs = staticmethod(finetune_setup)

    def expected_checkpoint(self) -> Path:
        """The newest checkpoint of the reference run."""
        from ernie_style.train.checkpoint import list_checkpoints

        return list_checkpoints(self.ref / "checkpoints")[0]

    def check_after_kill(self) -> list[str]:
        """best/ is absent or complete."""
        return check_best_after_kill(self.work)

    def compare_outputs(self) -> list[str]:
        """metrics.json equals the reference's."""
        metrics = json.loads((self.work / "metrics.json").read_text())
        if metrics != json.loads((self.ref / "metrics.json").read_text()):
            return ["metrics.json differs from the reference"]
        return []


#: The training commands' trial cases.
TRAINING: dict[str, type[TrainingCase]] = {"pretrain": PretrainCase, "finetune": FinetuneCase}


def training_trial(
    command: str,
    root: Path,
    inputs: Any,
    reference: Mapping[str, Any],
    seed: int,
    faults: Sequence[str],
    window: float = 1.0,
    launch: Launcher = fork_launcher,
) -> Trial:
    """Kill a tiny `command` run once per entry of `faults`, resuming each time, then resume
    to the end and compare with the `reference` (see the module docstring). Random delays are
    drawn within `window` times the reference run's measured duration."""
    case = TRAINING[command](root, inputs, reference, seed, window)
    return run_trial(case, seed, faults, launch)
