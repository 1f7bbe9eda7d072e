"""The shipped CPU suite's fine-tuning defaults learn its label sets: with them, even a randomly
initialised encoder half as wide as `tiny` (hidden 64, 2 layers: a quarter of its FLOPs, so
the check costs minutes less) predicts more than one class and beats the majority class on every
classification task, and finds entities in the NER task (the failure this guards against: every
run predicting one class, as the old 120-sentence sentiment set did, or tagging every word O, as
3 epochs of WNUT-16 did)."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from ernie_style.finetune.suite import SuiteConfig
from ernie_style.testing import ROOT
from ernie_style.testing.finetune import run_suite_workers

SHIPPED = ROOT / "configs" / "suites" / "cpu.yaml"


def labels_of(path: Path, field: str) -> list[str]:
    """The label column of a suite TSV file."""
    with path.open(encoding="utf-8", newline="") as handle:
        return [row[field] for row in csv.DictReader(handle, delimiter="\t")]


def half_tiny_encoder(tokenizer: Path, out: Path) -> Path:
    """A randomly initialised ERNIE encoder like `tiny` at half its width (hidden 64, FFN 256)."""
    import torch
    from transformers import ErnieModel

    from ernie_style.pretrain.model import build_backbone_config
    from ernie_style.tokenizer import load_tokenizer

    tok = load_tokenizer(str(tokenizer))
    config = build_backbone_config(
        "tiny", len(tok), tok.pad_token_id, hidden_size=64, intermediate_size=256
    )
    torch.manual_seed(0)
    ErnieModel(config).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


@pytest.mark.slow
def test_shipped_defaults_do_not_collapse_to_one_class(tmp_path, monkeypatch):
    from ernie_style.tokenizer import train_wordpiece

    monkeypatch.chdir(ROOT)
    shipped = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))
    types = ("classification", "token_classification")
    tasks = [task for task in shipped["tasks"] if task["type"] in types]
    assert len(tasks) >= 4
    texts = []
    for task in tasks:
        with open(task["data"]["train"], encoding="utf-8", newline="") as handle:
            if task["type"] == "token_classification":
                texts += [" ".join(json.loads(line)["tokens"]) for line in handle]
            else:
                texts += [row["text"] for row in csv.DictReader(handle, delimiter="\t")]
    train_wordpiece(texts, vocab_size=6000).save_pretrained(str(tmp_path / "tokenizer"))
    # The shipped settings unchanged: epochs, learning rate, batch size, precision, overrides.
    suite = SuiteConfig(
        name="cpu-labels",
        finetune=shipped["finetune"],
        tasks=tasks,
        task_overrides=shipped.get("task_overrides", {}),
    )
    suite.validate()
    out = tmp_path / "out"
    # Two eval-suite workers on one output, one thread each (the way a 2-core machine runs a
    # suite fastest); the runs and their results are the same as one worker's.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # Checked to fail when broken: WNUT-16 at 3 epochs gives entity F1 0.0; lr 1e-6 predicts one
    # class on rt_sentiment.
    run_suite_workers(
        2, suite, str(half_tiny_encoder(tmp_path / "tokenizer", tmp_path / "enc")), out, [0]
    )
    for task in tasks:
        name = task["name"]
        if task["type"] == "token_classification":
            run = out / "runs" / name / "seed-0"
            f1 = json.loads((run / "metrics.json").read_text())[name]["test"]["entity_f1"]
            assert f1 >= 0.05, (name, f1)  # entities found, not every word tagged O
            continue
        run = out / "runs" / name / "seed-0"
        predictions = [
            json.loads(line)["prediction"]
            for line in (run / "predictions" / f"{name}.jsonl").read_text().splitlines()
        ]
        test_labels = labels_of(Path(task["data"]["test"]), task["label_field"])
        majority = Counter(test_labels).most_common(1)[0][1] / len(test_labels)
        accuracy = json.loads((run / "metrics.json").read_text())[name]["test"]["accuracy"]
        assert len(set(predictions)) >= 2, (name, Counter(predictions))
        assert accuracy >= majority + 0.05, (name, accuracy, majority)
