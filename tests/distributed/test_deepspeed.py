"""DeepSpeed ZeRO-2 on one process through accelerate: trains, checkpoints, resumes exactly and
continues with a new task. Two processes through torchrun + `deepspeed.initialize` (gloo on CPU),
ZeRO-1, -2 and -3, are trained, killed and resumed in test_deepspeed_kill_resume.py."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import pytest

from ernie_style.testing import free_port
from ernie_style.testing.pretrain import ROOT, child_env, pretrain_cmd, write_config
from ernie_style.train.checkpoint import list_checkpoints, verify

pytestmark = pytest.mark.slow


def accelerate_deepspeed(config, *extra):
    launch = [sys.executable, "-m", "accelerate.commands.launch"]
    launch += ["--config_file", str(ROOT / "configs" / "accelerate" / "deepspeed_zero2.yaml")]
    launch += ["--num_processes", "1", "--main_process_port", str(free_port())]
    return [*launch, "-m", "ernie_style", *pretrain_cmd(config, *extra)[3:]]


def run(cmd):
    result = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def losses_by_run(path):
    """Per (step, task) losses of each invocation appended to train_loss.csv, in order."""
    rows = list(csv.DictReader(path.open()))
    runs, current, last_step = [], {}, -1
    for row in rows:
        step = int(row["step"])
        if step < last_step:
            runs.append(current)
            current = {}
        current[(step, row["task"])] = float(row["loss"])
        last_step = step
    return [*runs, current]


def train_cut_resume(launcher, small_corpus, tmp_path):
    config = write_config(tmp_path / "ds.yaml", small_corpus, tmp_path / "run")
    result = run(launcher(config))
    assert "DeepSpeed ZeRO-2" in result.stderr + result.stdout
    checkpoints = tmp_path / "run" / "checkpoints"
    assert [c.name for c in list_checkpoints(checkpoints)][:2] == ["step-00000026", "step-00000025"]
    assert all(verify(c) is None for c in list_checkpoints(checkpoints))
    for later in list_checkpoints(checkpoints):
        if later.name > "step-00000015":
            shutil.rmtree(later)
    result = run(launcher(config, "--resume", "auto"))
    assert "resumed from" in result.stderr + result.stdout
    full, resumed = losses_by_run(tmp_path / "run" / "train_loss.csv")
    assert min(s for s, _ in resumed) == 15 and set(resumed) <= set(full)
    for key, value in resumed.items():
        assert value == pytest.approx(full[key], abs=1e-6), key
    final = json.loads((list_checkpoints(checkpoints)[0] / "trainer_state.json").read_text())
    return final


def test_zero2_one_process_through_accelerate_resumes_and_continues_with_a_new_task(
    small_corpus, tmp_path
):
    final = train_cut_resume(accelerate_deepspeed, small_corpus, tmp_path)
    assert final["step"] == 26 and final["num_processes"] == 1
    # The finished run continues with newly added tasks (old tasks keep training).
    tasks = {
        "knowledge_masking": {"budget": 12},
        "capitalization": {"budget": 8},
        "sentence_distance": {"budget": 6},
        "sentence_reordering": {"budget": 6},
    }
    more = write_config(tmp_path / "more.yaml", small_corpus, tmp_path / "run", tasks=tasks)
    result = run(accelerate_deepspeed(more, "--resume", "auto"))
    assert "resumed from" in result.stderr + result.stdout
    newest = list_checkpoints(tmp_path / "run" / "checkpoints")[0]
    state = json.loads((newest / "trainer_state.json").read_text())
    assert "sentence_reordering" in state["tasks"] and state["schedule"]["stage"] == 4
    assert state["schedule"]["done"][3]["knowledge_masking"] > 0  # old tasks keep training
