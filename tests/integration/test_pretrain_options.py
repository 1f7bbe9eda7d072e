"""Schedule options end to end: mixed-task batches, masked LM on every step, and continuing
pretraining from an exported release."""

from __future__ import annotations

import json
import subprocess

from pretrain_helpers import child_env, pretrain_cmd, step_losses, write_config

from ernie_style.checkpoint import list_checkpoints


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
