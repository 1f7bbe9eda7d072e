"""Selective (hierarchical) supervision, `head_layer` (Søgaard & Goldberg 2016): a task's head
reads a chosen encoder layer, only the layers up to it learn from that task, and its export is a
stock model with that many layers and the same logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ernie_style.config import load_config
from ernie_style.finetune.config import FinetuneConfig
from ernie_style.finetune.data import Collator, EncodedTask
from ernie_style.finetune.export import load_exported
from ernie_style.finetune.model import build_model, load_encoder
from ernie_style.finetune.scoring import stock_scorer
from ernie_style.finetune.trainer import FinetuneTrainer
from ernie_style.testing.finetune import make_encoder_dir, shipped_tasks, write_config


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> Path:
    return make_encoder_dir(tmp_path_factory.mktemp("encoder") / "enc", num_hidden_layers=3)


def task(name: str, kind: str, head_layer: int | None, labels=("a", "b", "c")) -> EncodedTask:
    return EncodedTask(name, kind, list(labels), {}, {}, Collator(kind, 0), head_layer=head_layer)


def batch(kind: str, name: str) -> dict:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 500, (4, 9), generator=gen)
    labels = torch.randint(0, 3, (4, 9) if kind == "token_classification" else (4,), generator=gen)
    return {
        "task": name,
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": torch.zeros_like(ids),
        "labels": labels,
    }


@pytest.mark.parametrize("kind", ["classification", "token_classification"])
def test_head_layer_one_gives_gradients_only_to_layers_up_to_one(encoder_dir, kind):
    encoder = load_encoder(encoder_dir)
    tasks = {"low": task("low", kind, 1), "top": task("top", kind, None)}
    model = build_model(encoder, tasks, "hard", {}, {}, False, seed=0).eval()
    assert model.head_layers == {"low": 1}
    model(batch(kind, "low")).loss.backward()
    grads = {n: p.grad for n, p in model.encoder.named_parameters()}
    for name, grad in grads.items():
        if ".layer.1." in name or ".layer.2." in name:
            assert grad is None, name
        elif ".layer.0." in name or name.startswith("embeddings.word_embeddings"):
            assert grad is not None and grad.abs().sum() > 0, name
    assert (grads["pooler.dense.weight"] is not None) == (kind == "classification")
    # The top task's loss reaches every layer.
    model.zero_grad(set_to_none=True)
    model(batch(kind, "top")).loss.backward()
    assert all(p.grad is not None for n, p in model.encoder.named_parameters() if ".layer.2." in n)


def test_head_reads_the_named_layer(encoder_dir):
    encoder = load_encoder(encoder_dir)
    tasks = {t: task(t, "classification", layer) for t, layer in (("l0", 0), ("l2", 2))}
    tasks["l3"] = task("l3", "classification", 3)  # the top layer: the plain path
    model = build_model(encoder, tasks, "hard", {}, {}, False, seed=0).eval()
    assert model.head_layers == {"l0": 0, "l2": 2}
    with torch.no_grad():
        for name, layer in (("l0", 0), ("l2", 2), ("l3", 3)):
            inputs = batch("classification", name)
            out = encoder(**model.encoder_inputs(inputs), output_hidden_states=True)
            pooled = encoder.pooler(out.hidden_states[layer])
            expected = model.heads[name].classifier(pooled)
            torch.testing.assert_close(model(inputs).logits, expected, rtol=0, atol=0)


def test_head_layer_above_the_encoder_is_refused(encoder_dir, tmp_path):
    encoder = load_encoder(encoder_dir)
    with pytest.raises(ValueError, match="task deep: head_layer 4 > the encoder's 3 layers"):
        build_model(encoder, {"deep": task("deep", "classification", 4)}, "hard", {}, {}, False, 0)
    with pytest.raises(ValueError, match=r"tasks\[0\]\.head_layer must be >= 0, got -1"):
        tasks = shipped_tasks("sentiment")
        tasks[0]["head_layer"] = -1
        load_config(
            FinetuneConfig, write_config(Path("/tmp/x.yaml"), encoder_dir, Path("/tmp/r"), tasks)
        )


def test_a_selective_run_exports_a_shallower_stock_model_with_the_same_logits(
    encoder_dir, tmp_path
):
    tasks = {t["name"]: t for t in shipped_tasks("sentiment", "wnut16")}
    tasks["wnut16"]["head_layer"] = 1  # entities read layer 1 of 3
    tasks["sentiment"]["head_layer"] = 2
    tasks = list(tasks.values())
    config = write_config(tmp_path / "c.yaml", encoder_dir, tmp_path / "run", tasks, epochs=1)
    trainer = FinetuneTrainer(load_config(FinetuneConfig, config, []))
    trainer.train()
    for name, layers in (("wnut16", 1), ("sentiment", 2)):
        stock, info = load_exported(tmp_path / "run" / "tasks" / name)
        assert stock.config.num_hidden_layers == layers == info["head_layer"]
        encoded = trainer.tasks[name]
        inputs = encoded.collator(encoded.splits["dev"][:6])
        with torch.no_grad():
            expected = trainer.unwrapped.eval()(inputs | {"task": name}).logits
        got = stock_scorer(stock.eval(), encoded.type)(inputs)
        torch.testing.assert_close(got, expected.float(), rtol=0, atol=0)
