"""Runs written before the one-engine refactor (tests/fixtures/legacy_v1, made by
tests/fixtures/make_legacy_v1.py at the commit named in its made_on.json) still resume, continue
and load: the pretraining checkpoint, the release and the fine-tuning checkpoint, with the
configs of that version (fine-tuning's flat optimizer keys included).

Resuming reproduces the step the old version wrote next bit for bit when this machine has the
CPU capability and torch version the fixture was made with; elsewhere fp32 kernels reduce in
another order and the comparison allows float rounding (1e-5).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ernie_style.testing.pretrain import ROOT, child_env

FIXTURE = ROOT / "tests" / "fixtures" / "legacy_v1"
MADE_ON = json.loads((FIXTURE / "made_on.json").read_text())
SAME_MACHINE = (
    MADE_ON["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    and MADE_ON["torch"] == torch.__version__
)


@pytest.fixture
def legacy(tmp_path: Path) -> Path:
    """A copy of the fixture whose configs point into the copy."""
    copy = tmp_path / "legacy_v1"
    shutil.copytree(FIXTURE, copy)
    pretrain = yaml.safe_load((copy / "pretrain.yaml").read_text())
    pretrain["output_dir"] = str(copy / "pretrain")
    pretrain["data"]["corpus"] = str(copy / "corpus")
    (copy / "pretrain.yaml").write_text(yaml.safe_dump(pretrain, sort_keys=False))
    finetune = yaml.safe_load((copy / "finetune.yaml").read_text())
    finetune["output_dir"] = str(copy / "finetune")
    finetune["encoder"] = str(copy / "release")
    for task in finetune["tasks"]:
        task["data"] = {k: str(ROOT / v) for k, v in task["data"].items()}
    (copy / "finetune.yaml").write_text(yaml.safe_dump(finetune, sort_keys=False))
    return copy


def _cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ernie_style", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _assert_same(new: dict[str, torch.Tensor], old: dict[str, torch.Tensor]) -> None:
    assert new.keys() == old.keys()
    for name in old:
        if SAME_MACHINE:
            assert torch.equal(new[name], old[name]), name
        else:
            torch.testing.assert_close(new[name], old[name], atol=1e-5, rtol=1e-5, msg=name)


def _resume_reproduces(run: Path, config: Path, command: str, last: str) -> None:
    kept = run / "checkpoints" / last
    expected = load_file(str(kept / "model.safetensors"))
    expected_optimizer = torch.load(kept / "optimizer.pt", weights_only=True)
    shutil.rmtree(kept)
    result = _cli(command, "--config", str(config), "--resume", "auto")
    assert "resumed from" in result.stdout + result.stderr
    _assert_same(load_file(str(kept / "model.safetensors")), expected)
    moments = torch.load(kept / "optimizer.pt", weights_only=True)
    assert moments.keys() == expected_optimizer.keys()
    for name, state in expected_optimizer["state"].items():
        _assert_same(
            {k: v for k, v in moments["state"][name].items() if torch.is_tensor(v)},
            {k: v for k, v in state.items() if torch.is_tensor(v)},
        )


def test_old_pretraining_checkpoint_resumes_to_the_same_weights(legacy: Path) -> None:
    _resume_reproduces(legacy / "pretrain", legacy / "pretrain.yaml", "pretrain", "step-00000012")


def test_old_finetuning_checkpoint_and_flat_config_resume_to_the_same_weights(
    legacy: Path,
) -> None:
    _resume_reproduces(legacy / "finetune", legacy / "finetune.yaml", "finetune", "step-00000008")


def test_old_release_loads_in_transformers_and_continues_pretraining(legacy: Path) -> None:
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

    release = str(legacy / "release")
    model = AutoModelForMaskedLM.from_pretrained(release)
    tokenizer = AutoTokenizer.from_pretrained(release)
    fill = pipeline("fill-mask", model=model, tokenizer=tokenizer)
    predictions = fill(f"the city is in the {tokenizer.mask_token} of the country.")
    assert len(predictions) == 5 and all(p["token_str"] for p in predictions)
    config = yaml.safe_load((legacy / "pretrain.yaml").read_text())
    config["output_dir"] = str(legacy / "continued")
    config["tasks"]["sentence_reordering"] = {"budget": 2}
    path = legacy / "continued.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = _cli("pretrain", "--config", str(path), "--resume", release)
    assert "continuing from release" in result.stdout + result.stderr
    (last,) = sorted((legacy / "continued" / "checkpoints").glob("step-*"))
    state = json.loads((last / "trainer_state.json").read_text())
    released = json.loads((legacy / "release" / "pretraining_tasks.json").read_text())
    assert state["schedule"]["stages"][:3] == released["schedule"]["stages"]
    assert state["step"] > 12 and "sentence_reordering" in state["tasks"]
