"""Tiny model on CPU: train, SIGKILL, resume; resume with a new task; export; NaN handling."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from ernie_style.config import load_config
from ernie_style.precision import resolve_precision
from ernie_style.pretrain.config import PretrainConfig
from ernie_style.testing.pretrain import child_env, pretrain_cmd, step_losses, write_config
from ernie_style.train.checkpoint import find_resumable, list_checkpoints

TOTAL_STEPS = 26  # 12 + 8 + 6


@pytest.fixture(scope="module")
def reference_run(small_corpus, tmp_path_factory):
    """The uninterrupted run every resumed run is compared with."""
    root = tmp_path_factory.mktemp("reference")
    config = write_config(root / "run.yaml", small_corpus, root / "run")
    subprocess.run(pretrain_cmd(config), check=True, capture_output=True, env=child_env())
    return root / "run"


def _final_weights(run_dir):
    newest = list_checkpoints(run_dir / "checkpoints")[0]
    assert newest.name == f"step-{TOTAL_STEPS:08d}"
    return load_file(str(newest / "model.safetensors"))


def test_uninterrupted_run_plans_trains_and_logs(reference_run):
    losses = step_losses(reference_run)
    assert {s for s, _ in losses} == set(range(TOTAL_STEPS))
    assert {t for _, t in losses} == {"knowledge_masking", "capitalization", "sentence_distance"}
    # Stage 1 is knowledge masking alone; later stages keep training it.
    assert all(t == "knowledge_masking" for s, t in losses if s < 6)
    assert any(t == "knowledge_masking" for s, t in losses if s >= 14)
    heldout = (reference_run / "heldout.csv").read_text().splitlines()
    assert heldout[0] == "step,stage,task,loss,accuracy,majority" and len(heldout) > 3
    for row in heldout[1:]:  # the majority-class rate is reported next to every accuracy
        accuracy, majority = (float(v) for v in row.split(",")[-2:])
        assert 0 <= accuracy <= 1 and 0 < majority <= 1
    assert (reference_run / "heldout_loss.png").stat().st_size > 1000
    assert list((reference_run / "tensorboard").glob("events.out.tfevents.*"))
    # The checkpoint records the precision `auto` resolved to on this machine.
    checkpoint = list_checkpoints(reference_run / "checkpoints")[-1]
    recorded = json.loads((checkpoint / "trainer_state.json").read_text())["precision"]
    assert recorded == resolve_precision("auto", "cpu").to_dict()


def test_sigkill_then_resume_reproduces_the_uninterrupted_run(
    reference_run, small_corpus, tmp_path
):
    config = write_config(tmp_path / "run.yaml", small_corpus, tmp_path / "run")
    proc = subprocess.Popen(pretrain_cmd(config), env=child_env(), stderr=subprocess.DEVNULL)
    csv_path = tmp_path / "run" / "train_loss.csv"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if csv_path.exists() and len(csv_path.read_text().splitlines()) > 13:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    checkpoint = find_resumable(tmp_path / "run" / "checkpoints")
    assert checkpoint is not None, "no complete checkpoint before the kill"
    resumed_at = json.loads((checkpoint / "trainer_state.json").read_text())["step"]
    assert 0 < resumed_at < TOTAL_STEPS
    subprocess.run(
        pretrain_cmd(config, "--resume", "auto"), check=True, capture_output=True, env=child_env()
    )
    reference, resumed = step_losses(reference_run), step_losses(tmp_path / "run")
    assert set(resumed) == set(reference)
    # Bit for bit: the logged losses are full-precision floats, the weights compared exactly.
    assert resumed == reference
    final, expected = _final_weights(tmp_path / "run"), _final_weights(reference_run)
    assert final.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(final[name], tensor), name


def test_building_in_the_training_process_gives_the_same_run(reference_run, small_corpus, tmp_path):
    # data.num_workers 0 (no loader process) and the default 1 build the same batches.
    config = write_config(
        tmp_path / "run.yaml", small_corpus, tmp_path / "run", data__num_workers=0
    )
    subprocess.run(pretrain_cmd(config), check=True, capture_output=True, env=child_env())
    assert step_losses(tmp_path / "run") == step_losses(reference_run)
    final, expected = _final_weights(tmp_path / "run"), _final_weights(reference_run)
    assert all(torch.equal(final[name], tensor) for name, tensor in expected.items())


def test_resume_with_a_new_task_keeps_weights_optimizer_and_history(
    reference_run, small_corpus, tmp_path
):
    from ernie_style.pretrain.trainer import PretrainTrainer
    from ernie_style.train.checkpoint import load_torch

    run_dir = shutil.copytree(reference_run, tmp_path / "run")  # the fixture stays as it is
    checkpoint = list_checkpoints(run_dir / "checkpoints")[0]
    config_path = write_config(
        tmp_path / "more.yaml",
        small_corpus,
        run_dir,
        tasks={
            "knowledge_masking": {"budget": 12},
            "capitalization": {"budget": 8},
            "sentence_distance": {"budget": 6},
            "sentence_reordering": {"budget": 6},
        },
    )
    config = load_config(PretrainConfig, config_path)
    trainer = PretrainTrainer(config, resume=str(checkpoint))  # restores, does not train
    state, new_tasks = trainer.state, trainer.new_tasks
    assert new_tasks == ["sentence_reordering"]
    saved = load_file(str(checkpoint / "model.safetensors"))
    current = state.model.state_dict()
    for name, tensor in saved.items():
        assert torch.equal(current[name], tensor), name
    saved_optimizer = load_torch(checkpoint / "optimizer.pt")["state"]
    params = dict(state.model.named_parameters())
    probe = "heads.capitalization.classifier.weight"
    assert torch.equal(
        state.optimizer.state[params[probe]]["exp_avg"], saved_optimizer[probe]["exp_avg"]
    )
    new_param = params["heads.sentence_reordering.classifier.weight"]
    assert new_param not in state.optimizer.state
    assert any(new_param is p for group in state.optimizer.param_groups for p in group["params"])
    history = json.loads((checkpoint / "trainer_state.json").read_text())["schedule"]["stages"]
    assert state.schedule.stages[:3] == history
    assert set(state.schedule.stages[3]) == {
        "knowledge_masking",
        "capitalization",
        "sentence_distance",
        "sentence_reordering",
    }
    assert state.schedule.stage == 3

    # The dry run shows the plan the resumed run follows: the three stages as they ran, then the
    # new one, with the real total (not the fresh 4-stage plan of the config).
    dry = subprocess.run(
        pretrain_cmd(config_path, "--resume", "auto", "--dry-run"),
        capture_output=True,
        env=child_env(),
        text=True,
    )
    assert dry.returncode == 0, dry.stderr[-2000:]
    fresh_total = load_config(PretrainConfig, config_path).build_schedule().total_steps
    assert state.schedule.total_steps != fresh_total
    steps_row = [line for line in dry.stdout.splitlines() if line.startswith("steps ")]
    assert steps_row[-1].split()[1:] == [
        *(str(state.schedule.stage_length(s)) for s in range(4)),
        str(state.schedule.total_steps),
    ]
    assert f"at step {TOTAL_STEPS} of {state.schedule.total_steps}" in dry.stdout

    run = subprocess.run(
        pretrain_cmd(config_path, "--resume", "auto"),
        capture_output=True,
        env=child_env(),
        text=True,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    losses = step_losses(run_dir)
    new_steps = {t for s, t in losses if s >= TOTAL_STEPS}
    assert "sentence_reordering" in new_steps and len(new_steps) >= 3  # old tasks keep training
    assert max(s for s, _ in losses) + 1 == state.schedule.total_steps  # as the dry run said


def test_resume_refuses_a_different_model_size_or_tokenizer(reference_run, small_corpus, tmp_path):
    run_dir = shutil.copytree(reference_run, tmp_path / "run")
    config = write_config(tmp_path / "big.yaml", small_corpus, run_dir, model={"preset": "small"})
    run = subprocess.run(
        pretrain_cmd(config, "--resume", "auto"), capture_output=True, env=child_env(), text=True
    )
    assert run.returncode == 2
    assert "model size does not match the config" in run.stderr
    assert "hidden_size: checkpoint 128 vs config 256" in run.stderr


def test_export_loads_with_stock_transformers_and_matches(reference_run, tmp_path):
    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer, ErnieConfig, ErnieModel

    release = tmp_path / "release"
    subprocess.run(
        [
            *pretrain_cmd(tmp_path / "x")[:3],
            "export",
            "--run",
            str(reference_run),
            "--output",
            str(release),
        ],
        check=True,
        capture_output=True,
        env=child_env(),
    )
    tokenizer = AutoTokenizer.from_pretrained(release)
    encoder = AutoModel.from_pretrained(release).eval()
    assert type(encoder).__name__ == "ErnieModel" and encoder.config.use_task_id
    assert type(AutoModelForMaskedLM.from_pretrained(release)).__name__ == "ErnieForMaskedLM"
    checkpoint = list_checkpoints(reference_run / "checkpoints")[0]
    weights = load_file(str(checkpoint / "model.safetensors"))
    config = ErnieConfig.from_dict(json.loads((checkpoint / "backbone_config.json").read_text()))
    trained = ErnieModel(config)
    trained.load_state_dict(
        {k[len("backbone.") :]: v for k, v in weights.items() if k.startswith("backbone.")}
    )
    trained.eval()
    batch = tokenizer(
        ["the city is big", "a river"],
        ["in the valley", "flows"],
        return_tensors="pt",
        padding=True,
    )
    assert "token_type_ids" in batch and batch["token_type_ids"].max() == 1
    task_ids = torch.full_like(batch["input_ids"], 1)
    with torch.no_grad():
        ours, theirs = (
            trained(**batch, task_type_ids=task_ids),
            encoder(**batch, task_type_ids=task_ids),
        )
    # The same weights through the same ErnieModel code: bit-identical outputs.
    assert torch.equal(ours.last_hidden_state, theirs.last_hidden_state)
    assert torch.equal(ours.pooler_output, theirs.pooler_output)
    card = (release / "README.md").read_text()
    assert "| `sentence_distance` | 4 |" in card and "tokens seen" in card
    assert f"Trained in {resolve_precision('auto', 'cpu').dtype} (precision auto: " in card
    tasks = json.loads((release / "pretraining_tasks.json").read_text())
    assert tasks["steps"] >= TOTAL_STEPS and tasks["tokens_seen"] > 0


def test_nonfinite_losses_stop_the_run_with_a_checkpoint(small_corpus, tmp_path, monkeypatch):
    from ernie_style.pretrain.trainer import PretrainTrainer
    from ernie_style.train.engine import NonFiniteLossError
    from pretrain_tasks.capitalization import Capitalization

    config = load_config(
        PretrainConfig,
        write_config(tmp_path / "nan.yaml", small_corpus, tmp_path / "run", max_nonfinite_steps=3),
    )
    real_loss = Capitalization.loss
    monkeypatch.setattr(
        Capitalization,
        "loss",
        lambda self, logits, targets: real_loss(self, logits, targets) * float("nan"),
    )
    trainer = PretrainTrainer(config)
    before = {k: v.clone() for k, v in trainer.state.model.state_dict().items()}
    with pytest.raises(NonFiniteLossError, match="3 non-finite losses in a row"):
        trainer.train()
    saved = find_resumable(tmp_path / "run" / "checkpoints")
    assert saved is not None
    state = json.loads((saved / "trainer_state.json").read_text())
    assert state["nonfinite_total"] == 3
    weights = load_file(str(saved / "model.safetensors"))
    changed = [k for k in before if not torch.equal(before[k], weights[k])]
    assert changed  # knowledge-masking steps trained before
    assert all(not k.startswith("heads.capitalization") for k in changed)  # NaN steps skipped
