"""A continued-pretraining run of a non-BERT family through the CLI (issue 27): all seven tasks
on a RoBERTa checkpoint (byte-level BPE, cased), then export: stock transformers loads a
`RobertaForMaskedLM` whose logits are the trained model's, bit for bit, and `fill-mask` answers;
the run resumes from its checkpoint to the uninterrupted run's weights, bit for bit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from distributed.kill_helpers import losses_by_run, run_and_kill_after
from transformers import CONFIG_MAPPING, AutoModelForMaskedLM, AutoTokenizer, pipeline

from ernie_style.pretrain.families import build_family_backbone
from ernie_style.pretrain.registry import registered_tasks
from ernie_style.pretrain.state import load_release
from ernie_style.testing import child_env
from ernie_style.testing.families import make_family_checkpoint
from ernie_style.testing.pretrain import pretrain_cmd, write_config
from ernie_style.train.checkpoint import list_checkpoints, load_tensors

pytestmark = pytest.mark.slow


def _run(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, env=child_env())
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _trained_backbone(run):
    """The backbone of a run's newest checkpoint, rebuilt from its saved config and weights."""
    checkpoint = list_checkpoints(run / "checkpoints")[0]
    raw = json.loads((checkpoint / "backbone_config.json").read_text())
    backbone = build_family_backbone(CONFIG_MAPPING[raw["model_type"]].from_dict(raw))
    weights = load_tensors(checkpoint / "model.safetensors")
    backbone.load_state_dict(
        {k.removeprefix("backbone."): v for k, v in weights.items() if k.startswith("backbone.")}
    )
    return backbone.eval()


def test_continue_a_roberta_checkpoint_with_all_seven_tasks_export_and_resume(
    small_corpus, tmp_path
):
    encoder = make_family_checkpoint("roberta", tmp_path / "roberta")
    tasks = {name: {"budget": 2} for name in registered_tasks()}
    changes = {
        "model": {"init_from": str(encoder), "architecture": "auto"},
        "data__tokenizer": str(encoder),
        "tasks": tasks,
        "precision": "fp32",
        "checkpoint_every": 7,
        "eval_every": 100,
    }
    full = write_config(tmp_path / "full.yaml", small_corpus, tmp_path / "full", **changes)
    _run(*pretrain_cmd(full))
    release = tmp_path / "release"
    _run(
        sys.executable,
        "-m",
        "ernie_style",
        "export",
        "--run",
        str(tmp_path / "full"),
        "--output",
        str(release),
    )

    stock = AutoModelForMaskedLM.from_pretrained(str(release), local_files_only=True).eval()
    assert type(stock).__name__ == "RobertaForMaskedLM"
    assert json.loads((release / "config.json").read_text())["model_type"] == "roberta"
    tokenizer = AutoTokenizer.from_pretrained(str(release), local_files_only=True)
    encoded = tokenizer(
        ["The city lies on the river.", "It was founded"], padding=True, return_tensors="pt"
    )
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    trained = _trained_backbone(tmp_path / "full")
    with torch.no_grad():
        zeros = torch.zeros_like(ids)
        hidden = trained(ids, mask, zeros, zeros).last_hidden_state
        want = trained.masked_lm_logits(hidden)
        got = stock(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(got[mask.bool()], want[mask.bool()])
    assert trained.task_rows.weight[1:7].abs().sum(1).gt(0).all()  # every task trained its row
    with pytest.raises(ValueError, match="a roberta release cannot be resumed yet"):
        load_release(None, release)  # said before anything is loaded
    fill = pipeline("fill-mask", model=str(release), tokenizer=str(release))
    answers = fill(f"The city lies on the {tokenizer.mask_token}.")
    assert len(answers) == 5 and all(a["token_str"] for a in answers)

    # Killed right after its step-7 checkpoint, the run resumes to the same weights, bit for bit.
    cut = write_config(tmp_path / "cut.yaml", small_corpus, tmp_path / "cut", **changes)
    checkpoints = tmp_path / "cut" / "checkpoints"
    run_and_kill_after(
        pretrain_cmd(cut), checkpoints / "step-00000007", tmp_path / "kill.log", workers=0
    )
    assert not (checkpoints / "step-00000014").exists()
    _run(*pretrain_cmd(cut, "--resume", "auto"))
    final = {name: list_checkpoints(tmp_path / name / "checkpoints")[0] for name in ("full", "cut")}
    assert final["full"].name == final["cut"].name == "step-00000014"
    want = load_tensors(final["full"] / "model.safetensors")
    got = load_tensors(final["cut"] / "model.safetensors")
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    (reference,) = losses_by_run(tmp_path / "full" / "train_loss.csv")
    for part in losses_by_run(tmp_path / "cut" / "train_loss.csv"):
        assert {key: reference[key] for key in part} == part
