"""The optimizer section both run configs share, and the old flat fine-tuning keys."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from ernie_style.config import load_config
from ernie_style.finetune.config import FinetuneConfig
from ernie_style.pretrain.config import PretrainConfig
from ernie_style.train.optim import OPTIM_KEYS, FinetuneOptim, OptimSection, PretrainOptim

TASK = {"name": "s", "type": "classification", "text_fields": ["text"], "labels": ["a", "b"]}


def _finetune(tmp_path, **top) -> FinetuneConfig:
    (tmp_path / "t.tsv").write_text("text\tlabel\nx\ta\n")
    task = TASK | {"data": {"train": str(tmp_path / "t.tsv")}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"encoder": "enc", "tasks": [task], **top}))
    return load_config(FinetuneConfig, path)


def test_both_run_configs_read_the_same_optimizer_keys():
    pretrain = dataclasses.fields(PretrainConfig)
    finetune = dataclasses.fields(FinetuneConfig)
    (p_optim,) = [f for f in pretrain if f.name == "optim"]
    (f_optim,) = [f for f in finetune if f.name == "optim"]
    assert issubclass(PretrainOptim, OptimSection) and issubclass(FinetuneOptim, OptimSection)
    names = [f.name for f in dataclasses.fields(OptimSection)]
    assert names == list(OPTIM_KEYS)
    assert [f.name for f in dataclasses.fields(p_optim.default_factory())] == names
    assert [f.name for f in dataclasses.fields(f_optim.default_factory())] == names
    # Only the defaults differ: pretraining's peak LR and warm-up are chosen by the run config
    # (from scratch or continued, below); fine-tuning warms up by a share.
    assert PretrainOptim().lr is None and PretrainOptim().warmup_steps is None
    assert FinetuneOptim().warmup(1000) == 100 and FinetuneOptim().warmup(50) == 5


def _pretrain(tmp_path, **top) -> PretrainConfig:
    path = tmp_path / "pretrain.yaml"
    data = {"data": {"corpus": "c"}, "tasks": {"knowledge_masking": {"budget": 5}}}
    path.write_text(yaml.safe_dump(data | top))
    return load_config(PretrainConfig, path)


def test_unset_pretraining_keys_take_from_scratch_or_continued_values_and_explicit_ones_win(
    tmp_path,
):
    scratch = _pretrain(tmp_path)
    assert (scratch.optim.lr, scratch.optim.warmup_steps, scratch.optim.warmup_ratio) == (
        5e-4,
        100,
        0.0,
    )
    assert scratch.schedule.restart_warmup_each_stage is True
    assert "from-scratch" in scratch.describe_defaults()
    continued = _pretrain(tmp_path, model={"init_from": "enc"})
    assert (continued.optim.lr, continued.optim.warmup_steps) == (1e-4, None)
    assert continued.optim.warmup_ratio == 0.1
    assert continued.schedule.restart_warmup_each_stage is False
    line = continued.describe_defaults()
    assert "model.init_from is set" in line and "optim.lr=0.0001" in line
    # Explicit settings win, and only what was left unset is reported as chosen.
    mixed = _pretrain(
        tmp_path,
        model={"init_from": "enc"},
        optim={"lr": 3e-5, "warmup_steps": 7},
        schedule={"restart_warmup_each_stage": True},
    )
    assert (mixed.optim.lr, mixed.optim.warmup_steps, mixed.optim.warmup_ratio) == (3e-5, 7, 0.0)
    assert mixed.schedule.restart_warmup_each_stage is True
    assert mixed.chosen_defaults == {} and mixed.describe_defaults() == ""
    ratio = _pretrain(tmp_path, model={"init_from": "enc"}, optim={"warmup_ratio": 0.2})
    assert (ratio.optim.warmup_steps, ratio.optim.warmup_ratio, ratio.optim.lr) == (None, 0.2, 1e-4)
    assert set(ratio.chosen_defaults) == {"optim.lr", "schedule.restart_warmup_each_stage"}


def test_nested_fine_tuning_optimizer_keys_load_without_a_warning(tmp_path, recwarn):
    config = _finetune(tmp_path, optim={"lr": 1e-3, "lr_schedule": "cosine"})
    assert config.optim.lr == 1e-3 and config.optim.lr_schedule == "cosine"
    assert config.optim.warmup_ratio == 0.1  # the fine-tuning default, not pretraining's
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)]


def test_old_flat_fine_tuning_keys_still_load_with_a_deprecation_warning(tmp_path):
    with pytest.warns(FutureWarning, match=r"top-level lr, warmup_ratio are deprecated"):
        config = _finetune(tmp_path, lr=2e-4, warmup_ratio=0.2, optim={"eps": 1e-8})
    assert (config.optim.lr, config.optim.warmup_ratio, config.optim.eps) == (2e-4, 0.2, 1e-8)
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match=r"optim\.grad_accum_steps"):
        _finetune(tmp_path, grad_accum_steps=0)


def test_a_key_given_flat_and_nested_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"lr: given both at the top level and as optim.lr"):
        _finetune(tmp_path, lr=2e-4, optim={"lr": 1e-3})


def test_command_line_overrides_reach_the_section(tmp_path):
    _finetune(tmp_path)
    config = load_config(FinetuneConfig, tmp_path / "run.yaml", ["optim.lr=3e-5"])
    assert config.optim.lr == 3e-5
    with pytest.warns(FutureWarning):
        old = load_config(FinetuneConfig, tmp_path / "run.yaml", ["lr=3e-5"])
    assert old.optim.lr == 3e-5
    _finetune(tmp_path, optim={"lr": 1e-3})  # the old override replaces the file's optim.lr
    with pytest.warns(FutureWarning):
        old = load_config(FinetuneConfig, tmp_path / "run.yaml", ["lr=3e-5"])
    assert old.optim.lr == 3e-5
    with pytest.raises(ValueError, match=r"optim\.lr must be > 0"):
        load_config(
            PretrainConfig, None, ["data.corpus=x", "tasks.capitalization.budget=1", "optim.lr=0"]
        )


def test_the_dry_run_says_which_defaults_it_chose_and_why(tmp_path, capsys):
    from ernie_style.cli import main

    path = tmp_path / "pretrain.yaml"
    data = {"data": {"corpus": "c"}, "tasks": {"knowledge_masking": {"budget": 5}}}
    path.write_text(yaml.safe_dump(data | {"model": {"init_from": "enc"}}))
    assert main(["pretrain", "--config", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    line = _pretrain(tmp_path, model={"init_from": "enc"}).describe_defaults()
    assert line in out.splitlines() and "lr: 0.0001" in out
    assert main(["pretrain", "--config", str(path), "--dry-run", "optim.lr=2e-5"]) == 0
    out = capsys.readouterr().out
    assert "lr: 2.0e-05" in out and "optim.lr=0.0001" not in out  # explicit: not chosen
