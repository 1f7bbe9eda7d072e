"""What `make demo` does, shrunk: all seven ERNIE 2.0 tasks introduced over seven stages (micro
preset, fp32), SIGKILLed in the last stage (where discourse_relation and ir_relevance train)
and resumed to the uninterrupted run bit for bit; the release loads in stock transformers,
fills masks, and fine-tunes on a shipped task.

The kill is deterministic: the killed run SIGKILLs itself as it starts writing checkpoint
`KILL_AT` (a real SIGKILL of the whole process, leaving that checkpoint's temp directory behind),
`KILL_AT - RESUME_FROM` steps after the last complete checkpoint, so the resume has to drop the
steps logged after `RESUME_FROM` and rebuild the data streams, sampler and RNG in mid-stage.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ernie_style.testing import child_env
from ernie_style.testing.finetune import shipped_tasks
from ernie_style.testing.finetune import write_config as write_finetune_config
from ernie_style.testing.pretrain import pretrain_cmd, step_losses, write_config
from ernie_style.train.checkpoint import find_resumable, list_checkpoints, load_torch

pytestmark = pytest.mark.slow

#: The seven tasks in the order `make demo` introduces them, with budgets (iterations) that give
#: stages of 2, 4, 6, 8, 10, 19 and 23 steps (72 in all); every task trains in stage 7.
BUDGETS = {
    "knowledge_masking": 8,
    "capitalization": 8,
    "token_document_relation": 8,
    "sentence_reordering": 8,
    "sentence_distance": 8,
    "discourse_relation": 16,
    "ir_relevance": 16,
}
TOTAL_STEPS = 72
LAST_STAGE_START = 49  # steps before stage 7
RESUME_FROM = 56  # the last complete checkpoint before the kill (stage 7)
KILL_AT = 64  # the checkpoint the killed run dies writing

#: `ernie-style ARGS`, SIGKILLed by itself when it starts writing checkpoint $KILL_AT.
KILLED_CLI = """
import os, signal, sys
from ernie_style.train import checkpoint
real_init = checkpoint.CheckpointWriter.__init__
def init(self, root, step):
    real_init(self, root, step)
    if step == int(os.environ["KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)
checkpoint.CheckpointWriter.__init__ = init
from ernie_style.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _config(root: Path, corpus: Path) -> Path:
    root.mkdir()
    return write_config(
        root / "run.yaml",
        corpus,
        root / "run",
        model={"preset": "micro"},
        precision="fp32",
        tasks={name: {"budget": budget} for name, budget in BUDGETS.items()},
        checkpoint_every=8,
        eval_every=1000,  # held-out evaluation at stage ends only
    )


@pytest.fixture(scope="module")
def runs(small_corpus, tmp_path_factory) -> dict:
    """An uninterrupted run and a killed one (both at once), then the killed one resumed.
    Read-only for the tests: they copy or export, never write into these directories."""
    root = tmp_path_factory.mktemp("seven_tasks")
    reference_config = _config(root / "reference", small_corpus)
    killed_config = _config(root / "killed", small_corpus)
    log = root / "reference.log"
    with log.open("w") as out:  # a file, not a pipe nobody reads while the killed run runs
        reference = subprocess.Popen(
            pretrain_cmd(reference_config), env=child_env(), stdout=out, stderr=out
        )
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_CLI, *pretrain_cmd(killed_config)[3:]],
        env=child_env() | {"KILL_AT": str(KILL_AT)},
        capture_output=True,
        text=True,
    )
    assert reference.wait() == 0, log.read_text()[-3000:]
    assert killed.returncode == -9, killed.stderr[-3000:]
    run_dir = root / "killed" / "run"
    after_kill = {
        "partial": sorted(p.name for p in (run_dir / "checkpoints").glob(".tmp-*")),
        "resumable": find_resumable(run_dir / "checkpoints"),
        "logged_steps": {s for s, _ in step_losses(run_dir)},
    }
    resumed = subprocess.run(
        pretrain_cmd(killed_config, "--resume", "auto"),
        env=child_env(),
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return {
        "reference": root / "reference" / "run",
        "resumed": run_dir,
        "after_kill": after_kill,
        "resume_output": resumed.stdout + resumed.stderr,
    }


def _newest(run_dir: Path) -> Path:
    newest = list_checkpoints(run_dir / "checkpoints")[0]
    assert newest.name == f"step-{TOTAL_STEPS:08d}"
    return newest


def test_the_uninterrupted_run_trains_all_seven_tasks_in_seven_stages(runs):
    losses = step_losses(runs["reference"])
    assert {s for s, _ in losses} == set(range(TOTAL_STEPS))
    assert {t for s, t in losses if s < 2} == {"knowledge_masking"}  # stage 1
    assert {t for s, t in losses if s >= LAST_STAGE_START} == set(BUDGETS)  # stage 7: all
    # The discourse and IR examples reach the trainer (the regex annotator finds enough).
    for task in ("discourse_relation", "ir_relevance"):
        assert any(t == task for _, t in losses), task
    state = json.loads((_newest(runs["reference"]) / "trainer_state.json").read_text())
    assert state["step"] == TOTAL_STEPS
    assert [sorted(stage) for stage in state["schedule"]["stages"]] == [
        sorted(list(BUDGETS)[: k + 1]) for k in range(7)
    ]


def test_sigkill_in_the_last_stage_then_resume_is_bit_identical(runs):
    after_kill = runs["after_kill"]
    # The kill hit mid-run, in stage 7, after a checkpoint, with steps logged past it.
    assert after_kill["partial"] and after_kill["partial"][0].startswith(f".tmp-step-{KILL_AT:08d}")
    assert after_kill["resumable"].name == f"step-{RESUME_FROM:08d}"
    assert max(after_kill["logged_steps"]) >= KILL_AT - 1
    assert LAST_STAGE_START < RESUME_FROM < TOTAL_STEPS
    assert f"step-{RESUME_FROM:08d}" in runs["resume_output"]  # it resumed, did not restart
    # The checkpoint it resumed from knows all seven tasks.
    state = json.loads((after_kill["resumable"] / "trainer_state.json").read_text())
    assert state["step"] == RESUME_FROM
    assert set(state["tasks"]) == set(BUDGETS)
    assert set(state["streams"]) >= {"discourse_relation", "ir_relevance"}
    # The steps replayed after the resume train discourse_relation and ir_relevance.
    reference, resumed = step_losses(runs["reference"]), step_losses(runs["resumed"])
    replayed = {t for s, t in reference if s >= RESUME_FROM}
    assert {"discourse_relation", "ir_relevance"} <= replayed
    # Identical logged losses (full-precision floats) at every step, identical final weights and
    # optimizer moments.
    assert resumed == reference
    # The rows the killed run logged past its last checkpoint (kept in the log, the resumed
    # copies after them) equal the reference too.
    with (runs["resumed"] / "train_loss.csv").open(encoding="utf-8") as f:
        rows = [(int(r["step"]), r["task"], float(r["loss"])) for r in csv.DictReader(f)]
    assert len(rows) >= TOTAL_STEPS
    assert all(reference[(step, task)] == loss for step, task, loss in rows)
    final = load_file(str(_newest(runs["resumed"]) / "model.safetensors"))
    expected = load_file(str(_newest(runs["reference"]) / "model.safetensors"))
    assert final.keys() == expected.keys()
    assert any(k.startswith("heads.discourse_relation.") for k in final)
    assert any(k.startswith("heads.ir_relevance.") for k in final)
    different = [name for name in expected if not torch.equal(final[name], expected[name])]
    assert different == []
    moments = load_torch(_newest(runs["resumed"]) / "optimizer.pt")["state"]
    expected_moments = load_torch(_newest(runs["reference"]) / "optimizer.pt")["state"]
    assert moments.keys() == expected_moments.keys()
    for name, slots in expected_moments.items():
        for slot, value in slots.items():
            assert torch.equal(torch.as_tensor(moments[name][slot]), torch.as_tensor(value)), (
                name,
                slot,
            )


def test_the_release_fills_masks_in_transformers_and_fine_tunes(runs, tmp_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

    release = tmp_path / "release"
    export = subprocess.run(
        [
            *pretrain_cmd(release)[:3],
            "export",
            "--run",
            str(runs["reference"]),
            "--output",
            str(release),
        ],
        env=child_env(),
        capture_output=True,
        text=True,
    )
    assert export.returncode == 0, export.stderr[-3000:]
    tasks = json.loads((release / "pretraining_tasks.json").read_text())
    assert set(tasks["tasks"]) == set(BUDGETS) and tasks["steps"] == TOTAL_STEPS

    model, info = AutoModelForMaskedLM.from_pretrained(release, output_loading_info=True)
    assert type(model).__name__ == "ErnieForMaskedLM"
    assert set(info["missing_keys"]) <= {
        "cls.predictions.decoder.weight",  # tied to the word embeddings
        "cls.predictions.decoder.bias",  # tied to cls.predictions.bias
    }
    # The masked-LM head is the trained knowledge-masking head, not a fresh one.
    trained = load_file(str(_newest(runs["reference"]) / "model.safetensors"))
    loaded = model.state_dict()
    head = {k: v for k, v in trained.items() if k.startswith("heads.knowledge_masking.")}
    assert head
    for key, value in head.items():
        assert torch.equal(
            loaded["cls.predictions." + key.removeprefix("heads.knowledge_masking.")], value
        )
    assert torch.equal(
        loaded["ernie.embeddings.word_embeddings.weight"],
        trained["backbone.embeddings.word_embeddings.weight"],
    )
    tokenizer = AutoTokenizer.from_pretrained(release)
    fill = pipeline("fill-mask", model=model.eval(), tokenizer=tokenizer)
    predictions = fill(f"the city is in the {tokenizer.mask_token} of the country.")
    assert len(predictions) == 5
    assert all(p["token_str"] and 0 <= p["score"] <= 1 for p in predictions)
    assert [p["score"] for p in predictions] == sorted(
        (p["score"] for p in predictions), reverse=True
    )

    # Fine-tune the release a few steps (120 sentiment sentences, batch 32, one epoch: 4 steps).
    config = write_finetune_config(
        tmp_path / "finetune.yaml",
        release,
        tmp_path / "finetune",
        shipped_tasks("sentiment"),
        epochs=1,
        batch_size=32,
        max_seq_len=64,
    )
    run = subprocess.run(
        [sys.executable, "-m", "ernie_style", "finetune", "--config", str(config)],
        env=child_env(),
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    with (tmp_path / "finetune" / "train_loss.csv").open() as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f)]
    assert len(losses) >= 3 and all(math.isfinite(loss) for loss in losses)
    assert (tmp_path / "finetune" / "metrics.md").is_file()
