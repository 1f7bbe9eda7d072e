"""Two CPU processes (DDP over gloo) through `accelerate launch --multi_gpu --num_processes 2`
resume a one-process run (elastic resume). Training, checkpointing and exact resume on two
processes: test_ddp_kill_resume.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from ernie_style.testing import free_port
from ernie_style.testing.pretrain import child_env, pretrain_cmd, step_losses, write_config
from ernie_style.train.checkpoint import list_checkpoints

pytestmark = pytest.mark.slow


def accelerate_cmd(config, *extra):
    # The launcher says bf16 on purpose: the run config's `precision` (auto) must decide.
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    launch += ["--num_processes", "2", "--num_machines", "1", "--mixed_precision", "bf16"]
    launch += ["--dynamo_backend", "no", "--main_process_port", str(free_port())]
    return [*launch, "-m", "ernie_style", *pretrain_cmd(config, *extra)[3:]]


def run(cmd):
    result = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_resume_on_a_different_number_of_processes(small_corpus, tmp_path):
    one = write_config(tmp_path / "one.yaml", small_corpus, tmp_path / "one")
    run(pretrain_cmd(one))
    # Keep the one-process run's checkpoint at step 10 only, and copy it into a fresh run dir.
    source = tmp_path / "one" / "checkpoints" / "step-00000010"
    target = tmp_path / "two" / "checkpoints" / "step-00000010"
    shutil.copytree(source, target)
    two = write_config(tmp_path / "two.yaml", small_corpus, tmp_path / "two")
    result = run(accelerate_cmd(two, "--resume", "auto"))
    assert "elastic resume" in result.stdout and "from 1 to 2" in result.stdout
    final_one = list_checkpoints(tmp_path / "one" / "checkpoints")[0]
    final_two = list_checkpoints(tmp_path / "two" / "checkpoints")[0]
    state_one = json.loads((final_one / "trainer_state.json").read_text())
    state_two = json.loads((final_two / "trainer_state.json").read_text())
    # The schedule is global; the data streams were re-sharded to one shard per process
    # (stream-level proof that nothing is lost or repeated: tests/test_stream.py).
    assert state_two["schedule"] == state_one["schedule"]
    assert state_one["streams"]["capitalization"]["num_shards"] == 1
    assert [s["shard"] for s in state_two["streams"]["capitalization"]["shards"]] == [0, 1]
    assert state_two["num_processes"] == 2
    resumed = step_losses(tmp_path / "two")
    assert min(s for s, _ in resumed) == 10 and max(s for s, _ in resumed) == 25
    weights = load_file(str(final_two / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
