"""Fine-tuning every encoder family: a multi-task run over all five pooled and token task types
on a tiny checkpoint of each family, whose exports are the family's own stock task models
(`RobertaFor...`, never `ErnieFor...`) with the trained logits bit for bit; the question
pointer exports as the family's stock QA model; `evaluate`, `load_finetuned` (active
learning's entry) and the eval-suite's random baseline take every family."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ernie_style.cli import main
from ernie_style.config import load_config
from ernie_style.finetune.config import FinetuneConfig
from ernie_style.finetune.data import Collator, EncodedTask
from ernie_style.finetune.encoder_families import FamilyEncoder, stock_inputs, wrap_encoder
from ernie_style.finetune.export import export_questions, load_exported
from ernie_style.finetune.loading import load_finetuned
from ernie_style.finetune.model import build_model, load_encoder
from ernie_style.finetune.scoring import stock_scorer
from ernie_style.finetune.suite import materialise_encoder
from ernie_style.finetune.trainer import FinetuneTrainer
from ernie_style.testing.easy_tasks import easy_tasks
from ernie_style.testing.families import make_family_checkpoint
from ernie_style.testing.finetune import write_config

#: architecture -> the class-name prefix of its stock transformers models.
STOCK_PREFIX = {
    "bert": "Bert",
    "roberta": "Roberta",
    "xlm-roberta": "XLMRoberta",
    "deberta-v2": "DebertaV2",
    "modernbert": "ModernBert",
    "electra": "Electra",
}
TASKS = {"domain": "Sequence", "order": "Sequence", "score": "Sequence", "rank": "Sequence"}
TASKS["pos"] = "Token"


@pytest.fixture(scope="module", params=sorted(STOCK_PREFIX))
def finetuned(request, tmp_path_factory):
    """One epoch of multi-task fine-tuning on a tiny random checkpoint of one family."""
    family = request.param
    root = tmp_path_factory.mktemp(f"finetune-{family}")
    release = make_family_checkpoint(family, root / "release")
    tasks = easy_tasks(root / "data")
    config_path = write_config(
        root / "run.yaml", release, root / "run", tasks, epochs=1, lr_schedule="constant"
    )
    trainer = FinetuneTrainer(load_config(FinetuneConfig, config_path, []))
    table = trainer.train()
    return family, release, trainer, table, config_path


def _batch(trainer: FinetuneTrainer, task: str) -> dict:
    encoded = trainer.tasks[task]
    return encoded.collator(encoded.splits["dev"][:6])


def test_each_family_exports_its_own_stock_task_models_with_the_trained_logits(finetuned):
    family, release, trainer, _, _ = finetuned
    ours = trainer.unwrapped.eval()
    assert isinstance(ours.encoder, FamilyEncoder) == (family != "bert")
    for task, kind in TASKS.items():
        stock, info = load_exported(trainer.run_dir / "tasks" / task)
        architecture = f"{STOCK_PREFIX[family]}For{kind}Classification"
        assert type(stock).__name__ == info["architecture"] == architecture, task
        assert stock.config.architectures == [architecture]
        batch = _batch(trainer, task)
        with torch.no_grad():
            expected = ours(batch | {"task": task}).logits.float()
        got = stock_scorer(stock.eval(), trainer.tasks[task].type)(batch)
        assert torch.equal(got, expected), (family, task, (got - expected).abs().max())
    # The encoder trained: the export's word embeddings moved away from the release's.
    exported = load_file(str(trainer.run_dir / "tasks" / "domain" / "model.safetensors"))
    original = load_file(str(release / "model.safetensors"))
    vocab = trainer.unwrapped.encoder.config.vocab_size
    key = next(k for k, v in original.items() if k in exported and v.shape[0] == vocab)
    assert "embeddings" in key and not torch.equal(exported[key], original[key])


def test_each_family_run_reloads_rescores_and_selects(finetuned, capsys, tmp_path):
    """`load_finetuned` (what active learning and `predict` read) rebuilds the trained model,
    `evaluate` re-scores an export with the trainer's metrics, and active learning's `select`
    picks from a pool with the family's model."""
    family, _, trainer, table, config_path = finetuned
    model, _, _, _ = load_finetuned(trainer.run_dir)
    assert type(model.encoder) is type(trainer.unwrapped.encoder)
    for task in ("order", "pos"):
        batch = _batch(trainer, task)
        with torch.no_grad():
            again = model(batch | {"task": task}).logits
            best = trainer.unwrapped.eval()(batch | {"task": task}).logits
        assert torch.equal(again, best), (family, task)
    capsys.readouterr()
    export = trainer.run_dir / "tasks" / "order"
    assert main(["evaluate", "--model", str(export), "--task-config", str(config_path)]) == 0
    scores = json.loads(capsys.readouterr().out)
    for split, values in scores.items():
        for metric, value in values.items():
            assert value == pytest.approx(table["order"][split][metric], abs=1e-6)
    rows = (config_path.parent / "data" / "order_test.tsv").read_text().splitlines()[1:13]
    pairs = [row.split("\t")[:2] for row in rows]
    pool = tmp_path / "pool.jsonl"
    pool.write_text(
        "".join(
            json.dumps({"id": f"p{i}", "text": a, "text_a": a, "text_b": b}) + "\n"
            for i, (a, b) in enumerate(pairs)
        )
    )
    picked = tmp_path / "picked.jsonl"
    args = ["select", "--model", str(trainer.run_dir), "--pool", str(pool), "--tasks"]
    args += ["domain,order", "--budget", "3", "--strategy", "mt-avg", "--output", str(picked)]
    assert main(args) == 0
    ids = [json.loads(line)["id"] for line in picked.read_text().splitlines()]
    assert len(set(ids)) == 3 and set(ids) <= {f"p{i}" for i in range(len(pairs))}


def test_the_eval_suite_runs_a_family_release(tmp_path, monkeypatch):
    from ernie_style.finetune.suite import load_suite, run_suite
    from ernie_style.testing import ROOT

    monkeypatch.chdir(ROOT)  # the shipped tasks' data paths are relative to the repository
    release = make_family_checkpoint("modernbert", tmp_path / "release")
    tasks = [t for t in load_suite(ROOT / "configs/suites/cpu.yaml").tasks][:1]
    for task in tasks:
        task["data"] = {split: path for split, path in task["data"].items() if split != "train"}
        task["data"]["train"] = task["data"]["dev"]  # a small train split: this checks wiring
    suite_path = tmp_path / "suite.yaml"
    finetune = {"precision": "fp32", "epochs": 1, "batch_size": 16, "max_seq_len": 32}
    suite_path.write_text(
        json.dumps({"name": "family", "seeds": 1, "finetune": finetune, "tasks": tasks})
    )
    suite = load_suite(suite_path)
    out = tmp_path / "out"
    run_suite(suite, str(release), out, [0], suite_path=str(suite_path))
    name = tasks[0]["name"]
    metrics = json.loads((out / f"runs/{name}/seed-0/metrics.json").read_text())
    assert metrics[name]["test"]
    info = json.loads(
        next((out / "runs").glob(f"{name}/seed-0/tasks/*/ernie_style_task.json")).read_text()
    )
    assert info["architecture"].startswith("ModernBertFor")


def _question_model(release: Path):
    encoder = load_encoder(release)
    shell = EncodedTask(
        name="qa",
        type="question_answering",
        labels=None,
        splits={},
        stats={},
        collator=Collator("classification", 0),
        is_question=True,
    )
    model = build_model(encoder, {"qa": shell}, "hard", {}, {}, False, seed=3)
    with torch.no_grad():  # move every head weight off its initial value (LayerNorm ones...)
        for name, tensor in model.named_parameters():
            if not name.startswith(("encoder.base.", "encoder.embeddings", "encoder.encoder")):
                tensor.add_(0.05 * torch.randn_like(tensor))
    return model.eval()


@pytest.mark.parametrize("family", sorted(STOCK_PREFIX))
def test_the_question_pointer_exports_each_family_stock_qa_model(family, tmp_path):
    release = make_family_checkpoint(family, tmp_path / "release")
    model = _question_model(release)
    torch.manual_seed(0)
    vocab = model.encoder.config.vocab_size
    batch = {
        "input_ids": torch.randint(5, vocab, (3, 12)),
        "attention_mask": torch.ones(3, 12, dtype=torch.long),
        "token_type_ids": (torch.arange(12) >= 6).long().expand(3, 12).clone(),
    }
    batch["attention_mask"][1, 9:] = 0
    with torch.no_grad():
        ours = model(batch | {"task": "qa"}).logits
    tokenizer = load_encoder_tokenizer(release)
    export = export_questions(model, [], tokenizer, tmp_path / "qa")
    stock, info = load_exported(export)
    assert info["architecture"] == f"{STOCK_PREFIX[family]}ForQuestionAnswering"
    with torch.no_grad():
        out = stock.eval()(**stock_inputs(stock.config, batch))
    got = torch.stack([out.start_logits, out.end_logits], dim=-1).float()
    keep = batch["attention_mask"].bool()
    assert torch.equal(got[keep], ours[keep]), family


def load_encoder_tokenizer(path: Path):
    from ernie_style.tokenizer import load_tokenizer

    return load_tokenizer(path, "encoder", special_tokens=())


def test_family_limits_and_unsupported_encoders_are_clear_errors(tmp_path):
    from transformers import DistilBertConfig, DistilBertModel

    release = make_family_checkpoint("roberta", tmp_path / "release")
    shell = EncodedTask("t", "classification", ["a", "b"], {}, {}, Collator("classification", 0))
    with pytest.raises(ValueError, match="towers and head_layer need a BERT or ERNIE"):
        build_model(load_encoder(release), {"t": shell}, "soft", {}, {}, False, seed=0)
    shell.head_layer = 1
    with pytest.raises(ValueError, match="towers and head_layer need a BERT or ERNIE"):
        build_model(load_encoder(release), {"t": shell}, "hard", {}, {}, False, seed=0)
    tiny = DistilBertModel(DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2))
    with pytest.raises(ValueError, match="model_type 'distilbert' has no pooler"):
        wrap_encoder(tiny)


def test_a_family_random_baseline_keeps_the_family_and_reseeds(tmp_path):
    release = make_family_checkpoint("deberta-v2", tmp_path / "release", seed=5)
    first = materialise_encoder(f"random:{release}", tmp_path / "out", seed=0)
    again = materialise_encoder(f"random:{release}", tmp_path / "out2", seed=0)
    assert json.loads((first / "config.json").read_text())["model_type"] == "deberta-v2"
    weights = [load_file(str(p / "model.safetensors")) for p in (release, first, again)]
    key = "deberta.embeddings.word_embeddings.weight"
    assert torch.equal(weights[1][key], weights[2][key])
    assert not torch.equal(weights[0][key], weights[1][key])
    assert isinstance(load_encoder(first), FamilyEncoder)
