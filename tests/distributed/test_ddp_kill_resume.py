"""A 2-process DDP pretraining run SIGKILLed after a checkpoint resumes, on 2 processes, to the
bit-identical weights and per-step losses of an uninterrupted 2-process run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ernie_style.testing.pretrain import child_env, pretrain_cmd, write_config
from ernie_style.train.checkpoint import list_checkpoints

from .kill_helpers import assert_equal_nested, losses_by_run, run_and_kill_after

pytestmark = pytest.mark.slow
#: 30 steps (2 tasks x 15), a checkpoint every 5: the kill lands right after step 10's.
TASKS = {"knowledge_masking": {"budget": 15}, "capitalization": {"budget": 15}}
KILL_AFTER = "step-00000010"
FINAL = "step-00000030"


def accelerate_cmd(config: Path, port: int, *extra: str) -> list[str]:
    """`accelerate launch` of `ernie-style pretrain` on 2 CPU processes."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    launch += ["--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    launch += ["--dynamo_backend", "no", "--main_process_port", str(port)]
    return [*launch, "-m", "ernie_style", *pretrain_cmd(config, *extra)[3:]]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    """Run to completion; fail with the stderr tail."""
    result = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_killed_ddp_run_resumes_bit_identically(small_corpus, tmp_path):
    changes = {"tasks": TASKS, "model__preset": "micro", "checkpoint_every": 5}
    full = write_config(tmp_path / "full.yaml", small_corpus, tmp_path / "full", **changes)
    run(accelerate_cmd(full, 29561))
    cut = write_config(tmp_path / "cut.yaml", small_corpus, tmp_path / "cut", **changes)
    checkpoints = tmp_path / "cut" / "checkpoints"
    run_and_kill_after(accelerate_cmd(cut, 29562), checkpoints / KILL_AFTER, tmp_path / "k.log")
    assert not (checkpoints / FINAL).exists()  # killed before the end
    result = run(accelerate_cmd(cut, 29563, "--resume", "auto"))
    assert f"{KILL_AFTER} at step 10" in result.stdout + result.stderr

    final = {name: list_checkpoints(tmp_path / name / "checkpoints")[0] for name in ("full", "cut")}
    assert final["full"].name == final["cut"].name == FINAL
    want = load_file(str(final["full"] / "model.safetensors"))
    got = load_file(str(final["cut"] / "model.safetensors"))
    assert set(got) == set(want)
    assert all(torch.equal(got[name], want[name]) for name in want)
    want_opt = torch.load(final["full"] / "optimizer.pt", weights_only=True)
    got_opt = torch.load(final["cut"] / "optimizer.pt", weights_only=True)
    assert_equal_nested(got_opt, want_opt)

    (reference,) = losses_by_run(tmp_path / "full" / "train_loss.csv")
    # The killed run's rows (up to the kill) and the resumed run's (from step 10), whether or
    # not the kill left rows past the checkpoint: every row equals the reference's.
    parts = losses_by_run(tmp_path / "cut" / "train_loss.csv")
    assert set().union(*parts) == set(reference)
    for part in parts:
        assert {key: reference[key] for key in part} == part
