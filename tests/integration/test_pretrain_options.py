"""Schedule options end to end: mixed-task batches, masked LM on every step, and continuing
pretraining from an exported release."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import torch

from ernie_style.testing.pretrain import child_env, pretrain_cmd, step_losses, write_config
from ernie_style.train.checkpoint import list_checkpoints


def run(cmd):
    result = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_mixed_batches_and_mlm_every_step(small_corpus, tmp_path):
    config = write_config(
        tmp_path / "mixed.yaml",
        small_corpus,
        tmp_path / "run",
        schedule={"mixed_batches": True, "tasks_per_step": 2, "mlm_every_step": True},
        batch_size=12,
    )
    run(pretrain_cmd(config))
    losses = step_losses(tmp_path / "run")
    by_step: dict[int, set[str]] = {}
    for step, task in losses:
        by_step.setdefault(step, set()).add(task)
    assert all("knowledge_masking" in tasks for tasks in by_step.values())
    later = [tasks for step, tasks in by_step.items() if step >= 8]
    assert any(len(tasks) == 3 for tasks in later)  # two sampled tasks + the masked-LM batch
    state = json.loads(
        (list_checkpoints(tmp_path / "run" / "checkpoints")[0] / "trainer_state.json").read_text()
    )
    done = state["schedule"]["done"]
    assert sum(sum(stage.values()) for stage in done) == 26  # budgets spent exactly
    # A step trains two sampled tasks: fewer steps than iterations, and the schedule (LR,
    # curriculum progress, progress bar) counts them right.
    from ernie_style.config import load_config
    from ernie_style.pretrain.config import PretrainConfig

    planned = load_config(PretrainConfig, config).build_schedule().total_steps
    assert max(by_step) + 1 == state["step"] == planned < 26


def test_continue_pretraining_from_a_release(small_corpus, tmp_path):
    first = write_config(tmp_path / "first.yaml", small_corpus, tmp_path / "first")
    run(pretrain_cmd(first))
    release = tmp_path / "release"
    run(
        [
            *pretrain_cmd(first)[:3],
            "export",
            "--run",
            str(tmp_path / "first"),
            "--output",
            str(release),
        ]
    )
    tasks = {
        "knowledge_masking": {"budget": 12},
        "capitalization": {"budget": 8},
        "sentence_distance": {"budget": 6},
        "token_document_relation": {"budget": 5},
    }
    second = write_config(tmp_path / "second.yaml", small_corpus, tmp_path / "second", tasks=tasks)
    result = run(pretrain_cmd(second, "--resume", str(release)))
    assert "continuing from release" in result.stderr + result.stdout
    losses = step_losses(tmp_path / "second")
    assert min(s for s, _ in losses) == 26  # the release's schedule history is kept
    assert "token_document_relation" in {t for _, t in losses}


def test_uncertainty_balancing_resumes_exactly(small_corpus, tmp_path):
    config = write_config(
        tmp_path / "a.yaml", small_corpus, tmp_path / "a", balancing="uncertainty"
    )
    run(pretrain_cmd(config))
    full = step_losses(tmp_path / "a")
    checkpoint = tmp_path / "a" / "checkpoints" / "step-00000010"
    assert (checkpoint / "balancer.pt").is_file()
    saved = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    assert any(name.startswith("balancer.log_variances") for name in saved["state"])
    shutil.copytree(checkpoint, tmp_path / "b" / "checkpoints" / checkpoint.name)
    config_b = write_config(
        tmp_path / "b.yaml", small_corpus, tmp_path / "b", balancing="uncertainty"
    )
    run(pretrain_cmd(config_b, "--resume", "auto"))
    resumed = step_losses(tmp_path / "b")
    assert min(step for step, _ in resumed) == 10
    assert resumed == {key: loss for key, loss in full.items() if key[0] >= 10}  # bit for bit


def test_gradnorm_balances_mixed_batches(small_corpus, tmp_path):
    config = write_config(
        tmp_path / "g.yaml",
        small_corpus,
        tmp_path / "run",
        schedule={"mixed_batches": True, "tasks_per_step": 2},
        balancing="gradnorm",
    )
    run(pretrain_cmd(config))
    checkpoint = list_checkpoints(tmp_path / "run" / "checkpoints")[0]
    state = torch.load(checkpoint / "balancer.pt", weights_only=True)
    from ernie_style.train.balancing import build_balancer

    balancer = build_balancer(
        "gradnorm", ["knowledge_masking", "capitalization", "sentence_distance"]
    )
    balancer.load_state_dict(state)
    weights = balancer.weights()
    assert abs(sum(weights.values()) - 3.0) < 1e-4
    assert len({round(w, 4) for w in weights.values()}) > 1  # GradNorm moved them apart


@pytest.mark.parametrize(
    "schedule",
    [
        {"stages": "pairwise"},
        {"stages": "anti_curriculum", "first_stage_tasks": ["sentence_distance"]},
    ],
    ids=["pairwise", "anti_curriculum"],
)
def test_curricula_train_each_stage_on_its_task_set(small_corpus, tmp_path, schedule):
    from ernie_style.config import load_config
    from ernie_style.pretrain.config import PretrainConfig

    config = write_config(tmp_path / "c.yaml", small_corpus, tmp_path / "run", schedule=schedule)
    plan = load_config(PretrainConfig, config).build_schedule()
    run(pretrain_cmd(config))
    trained: dict[int, set[str]] = {}
    for step, task in step_losses(tmp_path / "run"):
        stage = max(s for s in range(len(plan.stages)) if plan.stage_start(s) <= step)
        trained.setdefault(stage, set()).add(task)
    planned = {s: {t for t, n in stage.items() if n} for s, stage in enumerate(plan.stages)}
    assert trained == planned
    assert len(planned) == (7 if schedule["stages"] == "pairwise" else 2)
    assert planned[0] == ({"knowledge_masking"} if len(planned) == 7 else {"sentence_distance"})
