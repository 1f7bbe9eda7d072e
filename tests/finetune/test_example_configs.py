"""The multi-task method examples under configs/finetune/ load and run end to end (a tiny
encoder stands in for the `make demo` release, one epoch)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ernie_style.config import load_config
from ernie_style.finetune.config import FinetuneConfig
from ernie_style.finetune.trainer import FinetuneTrainer
from ernie_style.testing.finetune import ROOT, make_encoder_dir

CONFIGS = sorted((ROOT / "configs" / "finetune").glob("*.yaml"))
#: One example per method of docs/multitask_methods.md (file-name fragment -> what it shows).
METHODS = {
    "multilevel_mmoe": "mmoe",
    "selective": "hard",
    "soft_sharing": "soft",
    "cross_stitch": "cross_stitch",
    "asymmetric": "hard",
    "anti_curriculum": "hard",
    "decanlp": "hard",
}


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> Path:
    return make_encoder_dir(tmp_path_factory.mktemp("encoder") / "enc")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_finetune_config_loads(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the shipped configs name their data relative to the repository
    config = load_config(FinetuneConfig, path)
    demo = "runs/demo_zh" if "_zh" in path.name else "runs/demo"  # the release a demo writes
    assert config.tasks and config.encoder == f"{demo}/release"


@pytest.mark.parametrize("fragment", METHODS)
def test_each_method_has_an_example_that_runs(fragment, encoder_dir, tmp_path, monkeypatch):
    (path,) = [p for p in CONFIGS if fragment in p.name]
    monkeypatch.chdir(ROOT)
    overrides = [f"encoder={encoder_dir}", f"output_dir={tmp_path / 'run'}", "epochs=1"]
    config = load_config(FinetuneConfig, path, overrides)
    assert config.sharing == METHODS[fragment]
    if fragment == "selective":
        assert {t.head_layer for t in config.tasks} == {None, 1}
    if fragment == "multilevel_mmoe":
        assert config.sharing_options["levels"] > 1
    table = FinetuneTrainer(config).train()
    assert set(table) == {t.name for t in config.tasks}
    assert (tmp_path / "run" / "metrics.json").is_file()
    exports = tmp_path / "run" / "tasks"
    exported = {p.name for p in exports.iterdir()} if exports.is_dir() else set()
    stock = config.sharing in ("hard", "soft")  # mixtures and cross-stitch have no stock model
    readers = {t.name for t in config.tasks if t.reads_from}
    questions = {t.name for t in config.tasks if t.is_question}
    expected = {t.name for t in config.tasks} - readers - questions
    expected |= {"questions"} if questions and config.sharing == "hard" else set()
    assert exported == (expected if stock else set())
    if fragment == "asymmetric":
        assert readers == {"wnut16"}
    if fragment == "decanlp":
        assert questions == {"sentiment", "wnut16", "wiki_qa"}
    if fragment == "anti_curriculum":
        assert config.stages == "anti_curriculum" and config.first_stage_tasks == ["wnut16"]
