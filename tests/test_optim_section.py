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
    # Only the defaults differ: pretraining warms up by steps, fine-tuning by a share.
    assert PretrainOptim().warmup(1000) == 100 and FinetuneOptim().warmup(1000) == 100
    assert FinetuneOptim().warmup(50) == 5 and PretrainOptim().lr > FinetuneOptim().lr


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
