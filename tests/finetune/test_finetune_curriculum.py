"""decaNLP's anti-curriculum in fine-tuning: the hardest task(s) alone first, then every task;
the stage follows from the step, so a run resumed inside the first stage repeats exactly."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from ernie_style.config import load_config
from ernie_style.finetune.config import FinetuneConfig
from ernie_style.finetune.trainer import FinetuneTrainer
from ernie_style.testing.finetune import make_encoder_dir, shipped_tasks, step_losses, write_config

NAMES = ("sentiment", "wiki_pairs", "wnut16")
CURRICULUM = {"stages": "anti_curriculum", "first_stage_tasks": ["wnut16"]}


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> Path:
    return make_encoder_dir(tmp_path_factory.mktemp("encoder") / "enc")


def config(tmp_path: Path, encoder_dir: Path, name: str, **top) -> Path:
    return write_config(
        tmp_path / f"{name}.yaml", encoder_dir, tmp_path / name, shipped_tasks(*NAMES), **top
    )


def test_the_first_stage_trains_the_hardest_task_alone_and_resumes_exactly(encoder_dir, tmp_path):
    top = CURRICULUM | {"epochs": 1, "checkpoint_every": 10, "keep_checkpoints": 50}
    trainer = FinetuneTrainer(
        load_config(FinetuneConfig, config(tmp_path, encoder_dir, "a", **top))
    )
    trainer.train()
    first = trainer.sampler.first_steps
    assert first == trainer.sampler.first_epoch_steps > 10  # one pass over wnut16's batches
    assert trainer.total_steps == first + trainer.sampler.steps_per_epoch
    losses = step_losses(tmp_path / "a")
    assert {task for step, (task, _) in losses.items() if step < first} == {"wnut16"}
    assert {task for step, (task, _) in losses.items() if step >= first} == set(NAMES)
    with (tmp_path / "a" / "train_loss.csv").open() as handle:
        stages = {int(r["step"]): r["stage"] for r in csv.DictReader(handle)}
    assert stages[0] == stages[first - 1] == "1" and stages[first] == "2"
    # Resume from a checkpoint inside the first stage: the same steps, bit for bit.
    middle = tmp_path / "a" / "checkpoints" / "step-00000010"
    shutil.copytree(middle, tmp_path / "b" / "checkpoints" / middle.name)
    path_b = config(tmp_path, encoder_dir, "b", **top)
    FinetuneTrainer(load_config(FinetuneConfig, path_b), resume="auto").train()
    assert step_losses(tmp_path / "b") == {s: v for s, v in losses.items() if s >= 10}


@pytest.mark.parametrize(
    ("top", "message"),
    [
        ({"stages": "pairwise"}, "stages: unknown curriculum 'pairwise' for fine-tuning"),
        ({"stages": "anti_curriculum"}, "first_stage_tasks: name the task"),
        ({"stages": "anti_curriculum", "first_stage_tasks": ["x"]}, r"among \["),
        ({"stages": "anti_curriculum", "first_stage_tasks": list(NAMES)}, "names every task"),
        ({"first_stage_tasks": ["wnut16"]}, "only for stages: anti_curriculum"),
        (CURRICULUM | {"first_stage_epochs": 0}, "first_stage_epochs must be > 0"),
    ],
)
def test_curriculum_errors_name_the_key(encoder_dir, tmp_path, top, message):
    with pytest.raises(ValueError, match=message):
        load_config(FinetuneConfig, config(tmp_path, encoder_dir, "bad", **top))
