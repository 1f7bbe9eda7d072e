"""Two CPU processes (DDP over gloo) through `accelerate launch --multi_gpu --num_processes 2`:
the run trains and checkpoints (with uncertainty weighting, whose log-variances are averaged over
the processes, and the precision the run config picks whatever the launcher says), and a run
SIGKILLed after a checkpoint resumes, on 2 processes, to the bit-identical weights, optimizer and
balancer state and per-step losses of the uninterrupted run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ernie_style.precision import resolve_precision
from ernie_style.testing import free_port
from ernie_style.testing.pretrain import child_env, pretrain_cmd, step_losses, write_config
from ernie_style.train.checkpoint import list_checkpoints, verify

from .kill_helpers import assert_equal_nested, losses_by_run, run_and_kill_after

pytestmark = pytest.mark.slow
#: 30 steps (2 tasks x 15), a checkpoint every 5: the kill lands right after step 10's.
TASKS = {"knowledge_masking": {"budget": 15}, "capitalization": {"budget": 15}}
KILL_AFTER = "step-00000010"
FINAL = "step-00000030"


def accelerate_cmd(config: Path, *extra: str) -> list[str]:
    """`accelerate launch` of `ernie-style pretrain` on 2 CPU processes."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    # The launcher says bf16 on purpose: the run config's `precision` (auto) must decide.
    launch += ["--num_processes", "2", "--num_machines", "1", "--mixed_precision", "bf16"]
    launch += ["--dynamo_backend", "no", "--main_process_port", str(free_port())]
    return [*launch, "-m", "ernie_style", *pretrain_cmd(config, *extra)[3:]]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    """Run to completion; fail with the stderr tail."""
    result = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _trained_and_checkpointed(run_dir: Path, stdout: str) -> None:
    """The uninterrupted run: complete checkpoints, two processes, the auto precision (printed
    once, by the main process), the balancer's state, a finite loss every step."""
    checkpoints = list_checkpoints(run_dir / "checkpoints")
    assert checkpoints[0].name == FINAL
    assert all(verify(c) is None for c in checkpoints)
    state = json.loads((checkpoints[0] / "trainer_state.json").read_text())
    assert state["num_processes"] == 2 and state["schedule"]["stage"] == 2
    auto = resolve_precision("auto", "cpu")
    assert state["precision"] == auto.to_dict()
    assert stdout.count(auto.describe()) == 1
    balancer = torch.load(checkpoints[0] / "balancer.pt", weights_only=True)
    assert any(key.startswith("log_variances") for key in balancer)
    losses = step_losses(run_dir)
    assert len({s for s, _ in losses}) == 30
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())


def test_killed_ddp_run_resumes_bit_identically(small_corpus, tmp_path):
    changes = {"tasks": TASKS, "model__preset": "micro", "checkpoint_every": 5}
    changes["balancing"] = "uncertainty"
    full = write_config(tmp_path / "full.yaml", small_corpus, tmp_path / "full", **changes)
    result = run(accelerate_cmd(full))
    _trained_and_checkpointed(tmp_path / "full", result.stdout)
    cut = write_config(tmp_path / "cut.yaml", small_corpus, tmp_path / "cut", **changes)
    checkpoints = tmp_path / "cut" / "checkpoints"
    run_and_kill_after(accelerate_cmd(cut), checkpoints / KILL_AFTER, tmp_path / "k.log")
    assert not (checkpoints / FINAL).exists()  # killed before the end
    result = run(accelerate_cmd(cut, "--resume", "auto"))
    assert f"{KILL_AFTER} at step 10" in result.stdout + result.stderr

    final = {name: list_checkpoints(tmp_path / name / "checkpoints")[0] for name in ("full", "cut")}
    assert final["full"].name == final["cut"].name == FINAL
    want = load_file(str(final["full"] / "model.safetensors"))
    got = load_file(str(final["cut"] / "model.safetensors"))
    assert set(got) == set(want)
    assert all(torch.equal(got[name], want[name]) for name in want)
    for state in ("optimizer.pt", "balancer.pt"):
        want_state = torch.load(final["full"] / state, weights_only=True)
        assert_equal_nested(torch.load(final["cut"] / state, weights_only=True), want_state)

    (reference,) = losses_by_run(tmp_path / "full" / "train_loss.csv")
    # The killed run's rows (up to the kill) and the resumed run's (from step 10), whether or
    # not the kill left rows past the checkpoint: every row equals the reference's.
    parts = losses_by_run(tmp_path / "cut" / "train_loss.csv")
    assert set().union(*parts) == set(reference)
    for part in parts:
        assert {key: reference[key] for key in part} == part
