"""A checkpoint with a flipped byte or a truncated file is detected by the manifest checksums,
skipped with a warning naming the file, and `--resume auto` continues from the newest intact
one to the same final weights as the uninterrupted run."""

from __future__ import annotations

import shutil
import subprocess

import torch
from kill_training import pretrain_config
from safetensors.torch import load_file

from ernie_style.testing.pretrain import child_env, pretrain_cmd
from ernie_style.train.checkpoint import list_checkpoints, verify


def test_corrupt_checkpoints_are_skipped_and_the_run_still_ends_identical(small_corpus, tmp_path):
    config = pretrain_config(tmp_path / "run.yaml", small_corpus, tmp_path / "run")
    subprocess.run(pretrain_cmd(config), check=True, capture_output=True, env=child_env())
    newest, second, third = list_checkpoints(tmp_path / "run" / "checkpoints")[:3]
    shutil.copytree(newest, tmp_path / "uninterrupted")
    expected = load_file(str(tmp_path / "uninterrupted" / "model.safetensors"))

    weights = newest / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit in the middle of the tensors
    weights.write_bytes(bytes(data))
    with (second / "optimizer.pt").open("r+b") as f:
        f.truncate(100)

    run = subprocess.run(
        pretrain_cmd(config, "--resume", "auto"), capture_output=True, text=True, env=child_env()
    )
    assert run.returncode == 0, run.stderr[-2000:]
    output = run.stdout + run.stderr
    assert f"warning: skipping checkpoint {newest.name}: {weights}: checksum mismatch" in output
    assert f"skipping checkpoint {second.name}: {second / 'optimizer.pt'}: size 100" in output
    assert f"resumed from {third}" in output
    final = list_checkpoints(tmp_path / "run" / "checkpoints")[0]
    assert final.name == newest.name and verify(final) is None
    got = load_file(str(final / "model.safetensors"))
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), (name, (got[name] - tensor).abs().max())
