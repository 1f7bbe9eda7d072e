"""Asymmetric sharing, `reads_from`: a task's head also reads other tasks' predicted class
probabilities (NER reads the POS head's softmax), detached, in an acyclic order."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ernie_style.config import load_config
from ernie_style.finetune.config import FinetuneConfig
from ernie_style.finetune.data import Collator, EncodedTask
from ernie_style.finetune.loading import load_finetuned
from ernie_style.finetune.model import build_model, load_encoder
from ernie_style.finetune.trainer import FinetuneTrainer
from ernie_style.testing.finetune import make_encoder_dir, shipped_tasks, write_config


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> Path:
    return make_encoder_dir(tmp_path_factory.mktemp("encoder") / "enc")


def shell(name: str, kind: str, labels: int, reads_from=()) -> EncodedTask:
    names = [f"l{i}" for i in range(labels)]
    return EncodedTask(name, kind, names, {}, {}, Collator(kind, 0), reads_from=list(reads_from))


TOKEN, TEXT = "token_classification", "classification"


def tasks() -> dict[str, EncodedTask]:
    return {
        "pos": shell("pos", TOKEN, 5),
        "chunk": shell("chunk", TOKEN, 3, ["pos"]),
        "ner": shell("ner", TOKEN, 4, ["chunk", "topic"]),  # a chain and a per-text source
        "topic": shell("topic", TEXT, 2),
        "sentiment": shell("sentiment", TEXT, 3, ["topic"]),
    }


def batch(task: str, token_level: bool) -> dict:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 500, (3, 7), generator=gen)
    shape = (3, 7) if token_level else (3,)
    return {
        "task": task,
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": torch.zeros_like(ids),
        "labels": torch.randint(0, 2, shape, generator=gen),
    }


def test_a_reader_sees_its_sources_probabilities(encoder_dir):
    model = build_model(load_encoder(encoder_dir), tasks(), "hard", {}, {}, False, 0).eval()
    hidden = model.encoder.config.hidden_size
    assert model.heads["ner"].classifier.in_features == hidden + 3 + 2
    assert model.heads["pos"].classifier.in_features == hidden
    with torch.no_grad():
        out = model.encoder(**model.encoder_inputs(batch("ner", True)))
        seq, pooled = out.last_hidden_state, out.pooler_output
        pos = torch.softmax(model.heads["pos"].classifier(seq), -1)
        chunk = torch.softmax(model.heads["chunk"].classifier(torch.cat([seq, pos], -1)), -1)
        topic = torch.softmax(model.heads["topic"].classifier(pooled), -1)
        features = torch.cat([seq, chunk, topic[:, None, :].expand(-1, 7, -1)], -1)
        expected = model.heads["ner"].classifier(features)
        torch.testing.assert_close(model(batch("ner", True)).logits, expected)
        sentiment = model.heads["sentiment"].classifier(torch.cat([pooled, topic], -1))
        torch.testing.assert_close(model(batch("sentiment", False)).logits, sentiment)


def test_no_gradient_flows_back_into_the_sources(encoder_dir):
    model = build_model(load_encoder(encoder_dir), tasks(), "hard", {}, {}, False, 0).train()
    model(batch("ner", True)).loss.backward()
    for name in ("pos", "chunk", "topic"):
        assert all(p.grad is None for p in model.heads[name].parameters()), name
    assert all(p.grad is not None for p in model.heads["ner"].parameters())
    assert model.encoder.embeddings.word_embeddings.weight.grad is not None


BASE = [
    {"name": "a", "type": TEXT, "labels": ["x", "y"]},
    {"name": "b", "type": TEXT, "labels": ["x", "y"]},
    {"name": "c", "type": TOKEN, "labels": ["O", "B-x"]},
    {"name": "r", "type": "regression"},
]


@pytest.mark.parametrize(
    ("reads", "message"),
    [
        (
            {"a": ["b"], "b": ["a"]},
            r"reads_from: the tasks read each other in a cycle: a -> b -> a",
        ),
        ({"a": ["a"]}, r"tasks\[0\]\.reads_from: 'a' is not another task"),
        ({"a": ["zz"]}, r"tasks\[0\]\.reads_from: 'zz' is not another task"),
        ({"a": ["r"]}, r"tasks\[0\]\.reads_from: 'r' is a regression task; readable types"),
        ({"a": ["c"]}, r"tasks\[0\]\.reads_from: 'c' predicts per token; a classification"),
    ],
)
def test_bad_reads_from_names_the_key(reads, message, encoder_dir, tmp_path):
    data = shipped_tasks("sentiment")[0]["data"]
    sections = []
    for section in BASE:
        fields = {"text_fields": ["tokens"] if section["type"] == TOKEN else ["text"]}
        label = {"label_field": "tags"} if section["type"] == TOKEN else {}
        sections.append(section | {"data": data} | fields | label)
        sections[-1]["reads_from"] = reads.get(section["name"], [])
    path = write_config(tmp_path / "c.yaml", encoder_dir, tmp_path / "run", sections)
    with pytest.raises(ValueError, match=message):
        load_config(FinetuneConfig, path)


def test_a_run_trains_exports_the_others_and_reloads(encoder_dir, tmp_path):
    specs = {t["name"]: t for t in shipped_tasks("sentiment", "wnut16")}
    specs["wnut16"]["reads_from"] = ["sentiment"]  # entities read the polarity probabilities
    config = write_config(
        tmp_path / "c.yaml", encoder_dir, tmp_path / "run", list(specs.values()), epochs=1
    )
    trainer = FinetuneTrainer(load_config(FinetuneConfig, config, []))
    table = trainer.train()
    assert set(table) == {"sentiment", "wnut16"}
    assert (tmp_path / "run" / "tasks" / "sentiment" / "config.json").is_file()
    assert not (tmp_path / "run" / "tasks" / "wnut16").exists()
    # The small loader: the run directory rebuilds the model with the same logits.
    model, _, _, _ = load_finetuned(tmp_path / "run")
    encoded = trainer.tasks["wnut16"]
    inputs = encoded.collator(encoded.splits["dev"][:5]) | {"task": "wnut16"}
    with torch.no_grad():
        expected = trainer.unwrapped.eval()(inputs).logits
        torch.testing.assert_close(model(inputs).logits, expected, rtol=0, atol=0)
