"""Every file under configs/ is valid for the command that reads it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ernie_style.cli import main
from ernie_style.config import load_config
from ernie_style.precision import resolve_precision
from ernie_style.pretrain.config import PretrainConfig
from ernie_style.train.deepspeed_support import fill_auto

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRETRAIN = sorted((CONFIGS / "pretrain").glob("*.yaml"))
ACCELERATE = sorted((CONFIGS / "accelerate").glob("*.yaml"))
DEEPSPEED = sorted((CONFIGS / "deepspeed").glob("*.json"))


def test_the_expected_files_are_shipped():
    names = {p.name for p in PRETRAIN + ACCELERATE + DEEPSPEED}
    assert {"demo_cpu.yaml", "mlm_only_baseline.yaml", "ernie2_base_en.yaml"} <= names
    assert {"cpu.yaml", "multi_gpu.yaml", "deepspeed_zero2.yaml", "multi_node.yaml"} <= names
    assert {"zero1.json", "zero2.json", "zero3.json"} <= names


@pytest.mark.parametrize("path", PRETRAIN, ids=lambda p: p.name)
def test_pretrain_configs_validate_and_dry_run(path, capsys):
    config = load_config(PretrainConfig, path)
    schedule = config.build_schedule()
    assert schedule.total_steps > 0
    assert main(["pretrain", "--config", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "stage 1" in out and f"{schedule.total_steps:>10}" in out.splitlines()[-1]
    assert resolve_precision("auto", "cpu").describe() in out.splitlines()


@pytest.mark.parametrize(
    "path", sorted(CONFIGS.glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_shipped_run_configs_let_the_hardware_pick_the_precision(path):
    data = yaml.safe_load(path.read_text())
    for key in ("precision", "mixed_precision"):
        assert data.get(key, "auto") in ("auto", "no"), (path, key, data.get(key))
    assert data.get("precision", "auto") == "auto"


def test_demo_and_baseline_spend_the_same_budget():
    demo = load_config(PretrainConfig, CONFIGS / "pretrain" / "demo_cpu.yaml")
    baseline = load_config(PretrainConfig, CONFIGS / "pretrain" / "mlm_only_baseline.yaml")
    assert demo.build_schedule().total_steps == baseline.build_schedule().total_steps
    assert len(demo.tasks) == 7 and list(baseline.tasks) == ["knowledge_masking"]
    assert baseline.tasks["knowledge_masking"].options == {"level_weights": {"basic": 1.0}}


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.name)
def test_accelerate_configs_load(path):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(path))
    assert config.num_processes >= 1
    if config.distributed_type.value == "DEEPSPEED":
        ds_file = config.deepspeed_config["deepspeed_config_file"]
        assert (CONFIGS.parent / ds_file).is_file()


@pytest.mark.parametrize("path", DEEPSPEED, ids=lambda p: p.name)
def test_deepspeed_configs_resolve(path):
    ds = json.loads(path.read_text())
    assert ds["zero_optimization"]["stage"] == int(path.stem[-1])
    config = load_config(PretrainConfig, CONFIGS / "pretrain" / "demo_cpu.yaml")
    fill_auto(ds, micro_batch=4, accum=2, world=2, config=config, precision="bf16")
    assert ds["train_batch_size"] == 16 and ds["bf16"]["enabled"] is True
    assert ds["fp16"]["enabled"] is False
    assert "auto" not in json.dumps(ds)
    fp32 = json.loads(path.read_text())
    fill_auto(fp32, micro_batch=4, accum=2, world=2, config=config, precision="fp32")
    assert fp32["bf16"]["enabled"] is False and fp32["fp16"]["enabled"] is False


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"data": {"corpus": "x"}, "tasks": {"nope": {"budget": 3}}}))
    assert main(["pretrain", "--config", str(bad), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ernie-style: error:") and "registered tasks: knowledge_masking" in err
    assert "\n" not in err
    bad.write_text(
        yaml.safe_dump(
            {
                "data": {"corpus": "x"},
                "tasks": {"capitalization": {"budget": 3}},
                "batch_size": 3,
                "optim": {"grad_accum_steps": 2},
            }
        )
    )
    assert main(["pretrain", "--config", str(bad), "--dry-run"]) == 2
    assert "does not divide" in capsys.readouterr().err


def test_tasks_command_lists_all_seven(capsys):
    assert main(["tasks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["name", "id", "level", "labels"]
    rows = {line.split()[0]: line.split()[1:4] for line in lines[1:]}
    assert rows["knowledge_masking"] == ["0", "token", "vocab"]
    assert rows["capitalization"] == ["1", "token", "2"]
    assert rows["sentence_reordering"] == ["3", "sequence", "9"]
    assert rows["sentence_distance"] == ["4", "sequence", "3"]
    assert rows["ir_relevance"] == ["6", "sequence", "3"]
    assert len(rows) == 7
