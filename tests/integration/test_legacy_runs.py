"""Runs written before the one-engine refactor still resume, continue and load: the pretraining
checkpoint, the release and the fine-tuning checkpoint, with the configs of that version
(fine-tuning's flat optimizer keys included).

Each `tests/fixtures/legacy_v1*` folder holds the same runs of that version (made by
tests/fixtures/make_legacy_v1.py at the commit its made_on.json names) on one kind of machine,
with that machine's `kernel_fingerprint()`. Resuming the kept step and comparing with the step the
old version wrote next checks:

* everywhere, exactly: what no float kernel decides (the schedule, data positions, tokens seen,
  RNG states, optimizer step counts and hyper-parameters);
* on a machine with the fixture's kernel fingerprint, the weights and optimizer moments bit for
  bit (this machine's own fixture: the exact path runs wherever one was made);
* elsewhere, the weights and moments within what fp32 rounding in other kernels can move them:
  Adam's update is at most about the learning rate per element and step (its normalised step
  m/sqrt(v) is ~1 even where the gradient is rounding noise), so no element may move further
  than 2 x lr per resumed step from the old value, and the median element, whose gradient is far
  above rounding, must agree to 1e-6. A resume that loses state (moments, RNG, data position)
  moves most elements by ~lr and fails the median check (tested).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ernie_style.testing.machine import same_kernels
from ernie_style.testing.pretrain import ROOT, child_env

FIXTURES = sorted(p.parent for p in (ROOT / "tests" / "fixtures").glob("legacy_v1*/made_on.json"))
#: The median |old - new| element a resume on other kernels may show (fp32 noise, amplified).
MEDIAN_BOUND = 1e-6


def _copy(fixture: Path, tmp_path: Path) -> Path:
    """A copy of the fixture whose configs point into the copy."""
    copy = tmp_path / fixture.name
    shutil.copytree(fixture, copy)
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


@pytest.fixture(params=FIXTURES, ids=[p.name for p in FIXTURES])
def legacy(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A copy of each kept fixture (one per machine kind it was made on)."""
    return _copy(request.param, tmp_path)


def _cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ernie_style", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def assert_reproduced(
    new: dict[str, torch.Tensor], old: dict[str, torch.Tensor], exact: bool, max_bound: float
) -> None:
    """Bit for bit when `exact`; else every element within `max_bound` and the median element
    within `MEDIAN_BOUND` (the rounding allowance of the module docstring)."""
    assert new.keys() == old.keys()
    if exact:
        for name in old:
            assert torch.equal(new[name], old[name]), name
        return
    for name in old:
        assert new[name].shape == old[name].shape and new[name].dtype == old[name].dtype, name
        assert torch.isfinite(new[name]).all(), name
    gaps = torch.cat([(new[n].double() - old[n].double()).abs().flatten() for n in sorted(old)])
    worst = int(gaps.argmax())
    assert gaps.max() <= max_bound, f"an element moved {gaps.max():.3g} > {max_bound:.3g} ({worst})"
    assert gaps.median() <= MEDIAN_BOUND, f"median gap {gaps.median():.3g} > {MEDIAN_BOUND}"


def _split_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """(moments by `param/name`, everything else: step counts and hyper-parameters)."""
    moments, rest = {}, {"param_groups": state["param_groups"], "steps": {}}
    for param, values in state["state"].items():
        for key, value in values.items():
            if key == "step":
                rest["steps"][param] = float(value)
            elif torch.is_tensor(value):
                moments[f"{param}/{key}"] = value
    return moments, rest


def _as_old(new: object, old: object, keys: set[str] | None = None) -> object:
    """`new` cut to the keys `old` has, recursively: what the new version writes beyond the old
    one (fine-tuning's tokens_seen, a history record's stage) is not compared."""
    if isinstance(new, dict) and isinstance(old, dict):
        return {k: _as_old(new.get(k), old[k]) for k in (old if keys is None else keys)}
    if isinstance(new, list) and isinstance(old, list) and len(new) == len(old):
        return [_as_old(n, o) for n, o in zip(new, old, strict=True)]
    return new


def _resume_reproduces(
    copy: Path, kind: str, last: str, lr: float, resumed_steps: int, float_keys: tuple[str, ...]
) -> None:
    """Delete checkpoint `last`, resume the run from the one before, compare what is rewritten."""
    made_on = json.loads((copy / "made_on.json").read_text())
    exact = same_kernels(made_on)
    kept = copy / kind / "checkpoints" / last
    expected_model = load_file(str(kept / "model.safetensors"))
    expected_rng = load_file(str(kept / "rng_state.safetensors"))
    expected_state = json.loads((kept / "trainer_state.json").read_text())
    expected_moments, expected_rest = _split_optimizer(
        torch.load(kept / "optimizer.pt", weights_only=True)
    )
    shutil.rmtree(kept)
    result = _cli(kind, "--config", str(copy / f"{kind}.yaml"), "--resume", "auto")
    assert "resumed from" in result.stdout + result.stderr

    # What no float kernel decides: equal on every machine.
    state = json.loads((kept / "trainer_state.json").read_text())
    kept_keys = set(expected_state) - set(() if exact else float_keys)
    assert _as_old(state, expected_state, kept_keys) == {k: expected_state[k] for k in kept_keys}
    rng = load_file(str(kept / "rng_state.safetensors"))
    assert rng.keys() == expected_rng.keys()
    for name in rng:
        assert torch.equal(rng[name], expected_rng[name]), name
    moments, rest = _split_optimizer(torch.load(kept / "optimizer.pt", weights_only=True))
    assert rest == expected_rest
    # Weights and moments: bit for bit on the fixture's kernels, else within fp32 rounding.
    bound = 2 * lr * resumed_steps
    assert_reproduced(load_file(str(kept / "model.safetensors")), expected_model, exact, bound)
    assert_reproduced(moments, expected_moments, exact, bound)


def test_old_pretraining_checkpoint_resumes_to_the_same_weights(legacy: Path) -> None:
    config = yaml.safe_load((legacy / "pretrain.yaml").read_text())
    lr = config["optim"]["lr"]
    _resume_reproduces(legacy, "pretrain", "step-00000012", lr, 6, float_keys=())


def test_old_finetuning_checkpoint_and_flat_config_resume_to_the_same_weights(
    legacy: Path,
) -> None:
    lr = yaml.safe_load((legacy / "finetune.yaml").read_text())["lr"]
    # Dev scores are argmaxes of float logits: equal only on the same kernels.
    _resume_reproduces(legacy, "finetune", "step-00000008", lr, 4, float_keys=("history", "best"))


def test_the_rounding_allowance_catches_a_resume_that_loses_the_optimizer_moments(
    tmp_path: Path,
) -> None:
    """The other-kernels comparison is no rubber stamp: resuming with Adam's moments reset (a
    loader that forgot them) fails it against the old run, on any machine."""
    copy = _copy(FIXTURES[0], tmp_path)
    checkpoints = copy / "pretrain" / "checkpoints"
    expected = load_file(str(checkpoints / "step-00000012" / "model.safetensors"))
    shutil.rmtree(checkpoints / "step-00000012")
    optimizer = torch.load(checkpoints / "step-00000006" / "optimizer.pt", weights_only=True)
    for values in optimizer["state"].values():
        values["exp_avg"].zero_()
        values["exp_avg_sq"].zero_()
    torch.save(optimizer, checkpoints / "step-00000006" / "optimizer.pt")
    manifest_path = checkpoints / "step-00000006" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    data = (checkpoints / "step-00000006" / "optimizer.pt").read_bytes()
    manifest["files"]["optimizer.pt"] = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }
    manifest_path.write_text(json.dumps(manifest, indent=1))
    _cli("pretrain", "--config", str(copy / "pretrain.yaml"), "--resume", "auto")
    new = load_file(str(checkpoints / "step-00000012" / "model.safetensors"))
    lr = yaml.safe_load((copy / "pretrain.yaml").read_text())["optim"]["lr"]
    with pytest.raises(AssertionError, match="median gap"):
        assert_reproduced(new, expected, exact=False, max_bound=2 * lr * 6)


def test_old_release_loads_in_transformers_and_continues_pretraining(tmp_path: Path) -> None:
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

    legacy = _copy(FIXTURES[0], tmp_path)
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
