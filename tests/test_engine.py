"""What the one training engine gives both runs: the NaN policy, the log columns, and the
upgrade of a train_loss.csv written before the columns were unified."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from ernie_style.config import load_config
from ernie_style.finetune.config import FinetuneConfig
from ernie_style.finetune.trainer import FinetuneTrainer
from ernie_style.testing.finetune import make_encoder_dir, shipped_tasks, write_config
from ernie_style.train.checkpoint import find_resumable
from ernie_style.train.engine import NonFiniteLossError
from ernie_style.train.monitor import TRAIN_FIELDS, RunLogger


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    return make_encoder_dir(tmp_path_factory.mktemp("encoder"), hidden_size=32)


def test_fine_tuning_stops_after_repeated_nonfinite_losses_like_pretraining(
    encoder, tmp_path, monkeypatch
):
    from ernie_style.finetune.model import MultiTaskModel

    config = write_config(
        tmp_path / "nan.yaml",
        encoder,
        tmp_path / "run",
        shipped_tasks("sentiment"),
        epochs=1,
        max_nonfinite_steps=2,
    )
    trainer = FinetuneTrainer(load_config(FinetuneConfig, config, []))
    real_forward = MultiTaskModel.forward
    calls = {"n": 0}

    def forward_nan_after_two(self, batch):
        out = real_forward(self, batch)
        if isinstance(out, list) and self.training:  # a training step's task outputs
            calls["n"] += 1
            if calls["n"] > 2:
                for task_output in out:
                    task_output.loss = task_output.loss * float("nan")
        return out

    monkeypatch.setattr(MultiTaskModel, "forward", forward_nan_after_two)
    with pytest.raises(NonFiniteLossError, match="2 non-finite losses in a row at step 3"):
        trainer.train()
    saved = find_resumable(tmp_path / "run" / "checkpoints")
    state = json.loads((saved / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["nonfinite_total"] == 2  # two steps trained, two skipped
    rows = _rows(tmp_path / "run" / "train_loss.csv")
    # Steps 0 and 1 trained, step 2 skipped (logged as nan), step 3 skipped and stopped the run.
    assert [r["step"] for r in rows] == ["0", "1", "2"]
    losses = torch.tensor([float(r["loss"]) for r in rows])
    assert torch.isfinite(losses[:2]).all() and torch.isnan(losses[2])
    # The saved state resumes after the skipped steps (their data counts as consumed).
    monkeypatch.setattr(MultiTaskModel, "forward", real_forward)
    resumed = FinetuneTrainer(load_config(FinetuneConfig, config, []), resume="auto")
    assert resumed.step == 4
    resumed.train()
    steps = [int(r["step"]) for r in _rows(tmp_path / "run" / "train_loss.csv")]
    assert steps == [0, 1, 2, *range(4, resumed.total_steps)]


def test_fine_tuning_logs_its_epoch_in_the_epoch_column(encoder, tmp_path):
    config = write_config(
        tmp_path / "c.yaml", encoder, tmp_path / "run", shipped_tasks("sentiment"), epochs=2
    )
    trainer = FinetuneTrainer(load_config(FinetuneConfig, config, []))
    trainer.train()
    path = tmp_path / "run" / "train_loss.csv"
    assert path.read_text().splitlines()[0].split(",") == TRAIN_FIELDS
    rows = _rows(path)
    per_epoch = trainer.sampler.steps_per_epoch
    assert [r["epoch"] for r in rows] == [str(int(r["step"]) // per_epoch + 1) for r in rows]
    assert {r["stage"] for r in rows} == {""} and {r["epoch"] for r in rows} == {"1", "2"}


@pytest.mark.parametrize(("phase", "stage", "epoch"), [("stage", "3", ""), ("epoch", "", "3")])
def test_an_old_train_loss_csv_is_upgraded_when_a_run_resumes(tmp_path, phase, stage, epoch):
    path = tmp_path / "train_loss.csv"
    path.write_text("step,stage,task,loss,accuracy\n7,3,mlm,0.25,\n")
    logger = RunLogger(tmp_path, enabled=True, phase=phase)
    logger.train_losses(8, stage, epoch, {"mlm": 0.125})
    logger.close()
    rows = _rows(path)
    assert list(rows[0]) == TRAIN_FIELDS
    assert [(r["step"], r["stage"], r["epoch"], r["loss"]) for r in rows] == [
        ("7", stage, epoch, "0.25"),
        ("8", stage, epoch, "0.125"),
    ]
