"""End-to-end multi-task fine-tuning on a tiny encoder and the shipped real data: every task
type learns, the exports reload in stock transformers with identical logits, `evaluate`
re-scores them, and a resumed run repeats the uninterrupted one exactly."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from ernie_style.cli import main
from ernie_style.config import load_config
from ernie_style.finetune.config import FinetuneConfig
from ernie_style.finetune.export import load_exported
from ernie_style.finetune.scoring import stock_scorer
from ernie_style.finetune.trainer import FinetuneTrainer
from ernie_style.testing.easy_tasks import easy_tasks
from ernie_style.testing.finetune import (
    make_encoder_dir,
    shipped_tasks,
    step_losses,
    write_config,
)


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> Path:
    return make_encoder_dir(tmp_path_factory.mktemp("encoder") / "encoder")


def majority_share(path: Path, field: str) -> float:
    with path.open() as handle:
        labels = [row[field] for row in csv.DictReader(handle, delimiter="\t")]
    return Counter(labels).most_common(1)[0][1] / len(labels)


@pytest.fixture(scope="module")
def trained(encoder_dir, tmp_path_factory):
    """One multi-task run over all five task types (task ids on, one of them non-zero)."""
    root = tmp_path_factory.mktemp("finetune")
    tasks = easy_tasks(root / "data")
    tasks[1]["task_id"] = 3
    config_path = write_config(
        root / "run.yaml", encoder_dir, root / "run", tasks, epochs=6, lr_schedule="constant"
    )
    trainer = FinetuneTrainer(load_config(FinetuneConfig, config_path, []))
    table = trainer.train()
    return trainer, table, config_path


def dev_majority(task) -> float:
    """Share of the most frequent label (token tasks: tag) in a task's dev split."""
    labels = []
    for example in task.splits["dev"]:
        value = example["labels"]
        labels += [v for v in value if v != -100] if isinstance(value, list) else [value]
    return Counter(labels).most_common(1)[0][1] / len(labels)


def test_every_task_type_learns_and_beats_its_baseline(trained):
    trainer, table, _ = trained
    losses = step_losses(trainer.run_dir)
    for task in trainer.tasks:
        values = [v for _, (t, v) in sorted(losses.items()) if t == task]
        first, last = sum(values[:5]) / 5, sum(values[-5:]) / 5
        assert last < first, (task, first, last)
    dev = {task: splits["dev"] for task, splits in table.items()}
    tasks = trainer.tasks
    assert dev["domain"]["accuracy"] > dev_majority(tasks["domain"]) + 0.1
    assert dev["order"]["accuracy"] > dev_majority(tasks["order"]) + 0.1
    assert dev["score"]["pearson"] > 0.3  # a constant prediction scores 0
    random_mrr = sum(1 / r for r in range(1, 5)) / 4  # 4 candidates in random order
    assert dev["rank"]["mrr"] > random_mrr + 0.1
    assert dev["pos"]["accuracy"] > dev_majority(tasks["pos"]) + 0.1


def test_run_writes_predictions_tables_curves_and_best_model(trained):
    trainer, table, _ = trained
    run = trainer.run_dir
    assert json.loads((run / "metrics.json").read_text()) == json.loads(json.dumps(table))
    markdown = (run / "metrics.md").read_text().splitlines()
    assert markdown[0] == "| task | metric | dev | test | test, majority label |"
    rows = [line.split(" | ")[:2] for line in markdown[2:]]
    assert len(rows) == len({tuple(r) for r in rows})  # every figure once
    expected = {(t, m) for t, splits in table.items() for s in splits.values() for m in s}
    assert {(t.removeprefix("| "), m) for t, m in rows} == expected
    accuracy = table["pos"]["dev"]["accuracy"], table["pos"]["test"]["accuracy"]
    row = f"| pos | accuracy | {accuracy[0]:.4f} | {accuracy[1]:.4f} | "
    assert any(line.startswith(row) for line in markdown)
    predictions = (run / "predictions" / "domain.jsonl").read_text().splitlines()
    assert len(predictions) == len(trainer.tasks["domain"].splits["test"])
    first = json.loads(predictions[0])
    assert first["source"].endswith("test.tsv:2")
    assert first["prediction"] in ("tweet", "review") and first["reference"] in ("tweet", "review")
    assert (run / "learning_curves.png").stat().st_size > 0
    history = json.loads((run / "history.json").read_text())
    assert len(history) == trainer.config.epochs
    best = json.loads((run / "best" / "best.json").read_text())
    assert best["score"] == max(h["score"] for h in history)
    assert list((run / "tensorboard").iterdir())


@pytest.mark.parametrize("task", ["domain", "order", "score", "rank", "pos"])
def test_export_reloads_in_stock_transformers_with_identical_logits(trained, task):
    trainer, _, _ = trained
    stock, info = load_exported(trainer.run_dir / "tasks" / task)
    assert info["task"] == task and type(stock).__name__ == info["architecture"]
    assert info["precision"] == trainer.precision.to_dict()
    assert info["precision"]["requested"] == trainer.config.precision
    encoded = trainer.tasks[task]
    batch = encoded.collator(encoded.splits["dev"][:6])
    ours = trainer.unwrapped.eval()
    with torch.no_grad():
        expected = ours(batch | {"task": task}).logits
    got = stock_scorer(stock.eval(), encoded.type)(batch)
    assert torch.equal(got, expected.float())
    if encoded.labels:
        assert stock.config.id2label == dict(enumerate(encoded.labels))


def test_evaluate_command_rescores_the_export(trained, capsys):
    trainer, table, config_path = trained
    model = trainer.run_dir / "tasks" / "order"
    code = main(["evaluate", "--model", str(model), "--task-config", str(config_path)])
    assert code == 0
    scores = json.loads(capsys.readouterr().out)
    for split, values in scores.items():
        for metric, value in values.items():
            assert value == pytest.approx(table["order"][split][metric], abs=1e-6)


def test_resume_from_a_checkpoint_repeats_the_run_exactly(encoder_dir, tmp_path):
    tasks = shipped_tasks("sentiment", "wiki_ranking")
    config = write_config(
        tmp_path / "a.yaml",
        encoder_dir,
        tmp_path / "a",
        tasks,
        epochs=2,
        checkpoint_every=20,
        balancing="uncertainty",
        keep_checkpoints=20,
    )
    FinetuneTrainer(load_config(FinetuneConfig, config, [])).train()
    full = step_losses(tmp_path / "a")
    resumed_dir = tmp_path / "b" / "checkpoints" / "step-00000020"
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step-00000020", resumed_dir)
    saved = json.loads((resumed_dir / "trainer_state.json").read_text())
    assert saved["precision"]["dtype"] == "fp32"  # the helpers' config: fp32, exact comparisons
    config_b = write_config(
        tmp_path / "b.yaml",
        encoder_dir,
        tmp_path / "b",
        tasks,
        epochs=2,
        checkpoint_every=20,
        balancing="uncertainty",
        keep_checkpoints=20,
    )
    FinetuneTrainer(load_config(FinetuneConfig, config_b, []), resume="auto").train()
    resumed = step_losses(tmp_path / "b")
    assert min(resumed) == 20 and max(resumed) == max(full)
    assert resumed == {step: row for step, row in full.items() if step >= 20}  # bit for bit
    metrics_a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert json.loads((tmp_path / "b" / "metrics.json").read_text()) == metrics_a


@pytest.mark.parametrize("sharing", ["mmoe", "ple"])
def test_mixture_sharing_trains(encoder_dir, tmp_path, sharing):
    tasks = shipped_tasks("sentiment", "wnut16")
    config = write_config(
        tmp_path / "c.yaml", encoder_dir, tmp_path / "run", tasks, epochs=1, sharing=sharing
    )
    trainer = FinetuneTrainer(load_config(FinetuneConfig, config, []))
    table = trainer.train()
    assert set(table) == {"sentiment", "wnut16"}
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
    assert not (tmp_path / "run" / "tasks").exists()  # mixtures have no stock counterpart
    losses = [v for _, (_, v) in step_losses(tmp_path / "run").items()]
    assert all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.parametrize("balancing", ["fixed", "uncertainty", "dwa", "gradnorm", "dtp"])
def test_every_balancing_strategy_runs_and_is_checkpointed(encoder_dir, tmp_path, balancing):
    tasks = shipped_tasks("sentiment", "doc_similarity")
    tasks[0]["loss_weight"] = 2.0
    config = write_config(
        tmp_path / "c.yaml",
        encoder_dir,
        tmp_path / "run",
        tasks,
        epochs=2,
        balancing=balancing,
    )
    trainer = FinetuneTrainer(load_config(FinetuneConfig, config, []))
    trainer.train()
    weights = trainer.balancer.weights()
    assert set(weights) == {"sentiment", "doc_similarity"}
    if balancing == "fixed":
        assert weights == {"sentiment": 2.0, "doc_similarity": 1.0}
    else:
        assert weights != {"sentiment": 1.0, "doc_similarity": 1.0}, balancing
    checkpoint = sorted((tmp_path / "run" / "checkpoints").iterdir())[-1]
    assert (checkpoint / "balancer.pt").is_file()


def test_bad_encoder_and_mismatched_tokenizer_are_refused(encoder_dir, tmp_path, capsys):
    tasks = shipped_tasks("sentiment")
    empty = tmp_path / "empty"
    empty.mkdir()
    config = write_config(tmp_path / "c.yaml", empty, tmp_path / "run", tasks)
    assert main(["finetune", "--config", str(config), f"tokenizer={encoder_dir}"]) == 2
    assert f"encoder: {empty} is not a model directory" in capsys.readouterr().err
    small = make_encoder_dir(tmp_path / "small", vocab_size=300)
    config = write_config(
        tmp_path / "d.yaml", small, tmp_path / "run", tasks, tokenizer=str(encoder_dir)
    )
    assert main(["finetune", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "tokens but the encoder" in err and "do not belong together" in err
    assert not (tmp_path / "run").exists()


def test_resume_with_a_new_task_keeps_the_old_weights(encoder_dir, tmp_path):
    first = write_config(
        tmp_path / "a.yaml", encoder_dir, tmp_path / "a", shipped_tasks("sentiment"), epochs=1
    )
    FinetuneTrainer(load_config(FinetuneConfig, first, [])).train()
    checkpoint = sorted((tmp_path / "a" / "checkpoints").iterdir())[-1]
    tasks = shipped_tasks("sentiment", "wiki_pairs")
    second = write_config(
        tmp_path / "b.yaml", encoder_dir, tmp_path / "b", tasks, epochs=2, sharing="mmoe"
    )
    with pytest.raises(ValueError, match="weights do not fit"):
        FinetuneTrainer(load_config(FinetuneConfig, second, []), resume=str(checkpoint))
    second = write_config(tmp_path / "b.yaml", encoder_dir, tmp_path / "b", tasks, epochs=2)
    trainer = FinetuneTrainer(load_config(FinetuneConfig, second, []), resume=str(checkpoint))
    from safetensors.torch import load_file

    saved = load_file(str(checkpoint / "model.safetensors"))
    state = trainer.unwrapped.state_dict()
    for key, value in saved.items():
        assert torch.equal(state[key], value), key
    assert trainer.step == json.loads((checkpoint / "trainer_state.json").read_text())["step"]
    trainer.train()
    assert "wiki_pairs" in json.loads((tmp_path / "b" / "metrics.json").read_text())


def test_dry_run_prints_the_tasks(encoder_dir, tmp_path, capsys):
    config = write_config(
        tmp_path / "c.yaml", encoder_dir, tmp_path / "run", shipped_tasks("wnut16", "sentiment")
    )
    assert main(["finetune", "--config", str(config), "--dry-run", "lr=3e-5"]) == 0
    out = capsys.readouterr().out
    assert "lr: 3.0e-05" in out
    assert "wnut16" in out and "token_classification" in out and "entity_f1" in out
    assert not (tmp_path / "run").exists()
