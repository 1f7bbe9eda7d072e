"""`al-simulate` end to end on a slice of the shipped WNUT-16 example and a tiny encoder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from ernie_style.cli import main
from ernie_style.finetune import trainer as trainer_module
from ernie_style.testing.finetune import ROOT, make_encoder_dir

EXAMPLE = ROOT / "data" / "active_learning" / "wnut16"
SHIPPED = ROOT / "configs" / "active_learning" / "wnut16_pos.yaml"


def _slice(source: Path, target: Path, count: int) -> list[str]:
    lines = source.read_text(encoding="utf-8").splitlines()[:count]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [json.loads(line).get("id") for line in lines]


@pytest.fixture
def simulation(tmp_path) -> Path:
    encoder = make_encoder_dir(tmp_path / "encoder")
    data = tmp_path / "data"
    pool_ids = _slice(EXAMPLE / "pool.jsonl", data / "pool.jsonl", 40)
    for task in ("ner", "pos"):
        _slice(EXAMPLE / "seed" / f"{task}.jsonl", data / "seed" / f"{task}.jsonl", 10)
        _slice(EXAMPLE / "oracle" / f"{task}.jsonl", data / "oracle" / f"{task}.jsonl", 40)
    finetune = yaml.safe_load(SHIPPED.read_text())
    finetune |= {"encoder": str(encoder), "epochs": 1, "precision": "no", "optim": {"lr": 1e-3}}
    for task in finetune["tasks"]:
        task["data"]["train"] = str(data / "seed" / f"{task['name']}.jsonl")
        dev = data / "dev" / f"{task['name']}.jsonl"
        _slice(ROOT / task["data"]["dev"], dev, 30)
        task["data"]["dev"] = str(dev)
    (tmp_path / "finetune.yaml").write_text(yaml.safe_dump(finetune, sort_keys=False))
    config = {
        "output_dir": str(tmp_path / "out"),
        "finetune": str(tmp_path / "finetune.yaml"),
        "pool": str(data / "pool.jsonl"),
        "oracle": str(data / "oracle"),
        "rounds": 2,
        "budget": 8,
        "strategies": ["random", "mt-avg"],
        "seeds": [0],
    }
    (tmp_path / "sim.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert len(pool_ids) == 40
    return tmp_path


def test_simulation_writes_curves_and_resumes(simulation, monkeypatch):
    assert main(["al-simulate", "--config", str(simulation / "sim.yaml")]) == 0
    out = simulation / "out"
    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    main_rows = [
        r for r in rows if r["split"] == "dev" and r["metric"] in ("entity_f1", "accuracy")
    ]
    seen = {(r["strategy"], r["round"], r["labeled"], r["task"]) for r in main_rows}
    for strategy in ("random", "mt-avg"):
        for round_index, labeled in ((0, 10), (1, 18), (2, 26)):
            for task in ("ner", "pos"):
                assert (strategy, str(round_index), str(labeled), task) in seen
    assert (out / "learning_curves.png").stat().st_size > 0
    pool_ids = {json.loads(line)["id"] for line in (simulation / "data" / "pool.jsonl").open()}
    for strategy in ("random", "mt-avg"):
        last = json.loads((out / strategy / "seed-0" / "round-2" / "result.json").read_text())
        acquired = last["acquired"]
        assert len(acquired) == len(set(acquired)) == 16 and set(acquired) <= pool_ids
        labeled = (out / strategy / "seed-0" / "round-2" / "labeled" / "ner.jsonl").read_text()
        assert len(labeled.splitlines()) == 26
    # the strategies pick differently (random vs least confident on average)
    first_batch = {
        s: json.loads((out / s / "seed-0" / "round-1" / "result.json").read_text())["acquired"]
        for s in ("random", "mt-avg")
    }
    assert first_batch["random"] != first_batch["mt-avg"]

    # Finished rounds are reused: a second run trains nothing.
    def refuse(*_, **__):
        raise AssertionError("a finished round was trained again")

    monkeypatch.setattr(trainer_module.FinetuneTrainer, "__init__", refuse)
    assert main(["al-simulate", "--config", str(simulation / "sim.yaml")]) == 0


def test_unknown_strategy_and_missing_oracle_labels_are_refused(simulation, capsys):
    config = str(simulation / "sim.yaml")
    assert main(["al-simulate", "--config", config, "strategies=[mt-best]"]) == 2
    assert "strategies[0]: unknown 'mt-best'" in capsys.readouterr().err
    (simulation / "data" / "oracle" / "pos.jsonl").write_text("")
    assert main(["al-simulate", "--config", config]) == 2
    assert "has no label for pool ids" in capsys.readouterr().err


def test_shipped_simulation_config_is_valid():
    from ernie_style.active_learning.simulate import SimulationConfig
    from ernie_style.config import load_config
    from ernie_style.finetune.config import FinetuneConfig

    config = load_config(
        SimulationConfig, ROOT / "configs" / "active_learning" / "simulate_wnut16.yaml", []
    )
    assert set(config.strategies) >= {"random", "mt-par", "mt-rrf"}
    finetune = load_config(FinetuneConfig, ROOT / config.finetune, config.finetune_overrides)
    assert [t.name for t in finetune.tasks] == ["ner", "pos"]
    assert (ROOT / config.pool).is_file() and (ROOT / config.oracle / "pos.jsonl").is_file()
