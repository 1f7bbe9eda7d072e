"""Two-process DDP fine-tuning through `accelerate launch --multi_gpu --num_processes 2`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ernie_style.testing import free_port
from ernie_style.testing.finetune import make_encoder_dir, shipped_tasks, step_losses, write_config
from ernie_style.testing.pretrain import child_env
from ernie_style.train.checkpoint import list_checkpoints, verify

pytestmark = pytest.mark.slow


def test_two_process_ddp_finetuning_with_gradnorm(tmp_path):
    encoder = make_encoder_dir(tmp_path / "encoder")
    tasks = shipped_tasks("sentiment", "wnut16")
    config = write_config(
        tmp_path / "ddp.yaml", encoder, tmp_path / "run", tasks, epochs=1, balancing="gradnorm"
    )
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    launch += ["--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    launch += ["--dynamo_backend", "no", "--main_process_port", str(free_port())]
    cmd = [*launch, "-m", "ernie_style", "finetune", "--config", str(config)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    checkpoint = list_checkpoints(run / "checkpoints")[0]
    assert verify(checkpoint) is None
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["num_processes"] == 2
    assert len(step_losses(run)) == state["step"] > 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"sentiment", "wnut16"}
    assert (run / "tasks" / "wnut16" / "config.json").is_file()
