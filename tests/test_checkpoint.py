import os

import pytest
import torch

from ernie_style.train.checkpoint import (
    CheckpointWriter,
    find_resumable,
    list_checkpoints,
    load_optimizer_state_by_name,
    load_torch,
    optimizer_state_by_name,
    prune,
    verify,
)


def write(root, step, payload=b"x" * 100):
    writer = CheckpointWriter(root, step)
    writer.save_tensors("model.safetensors", {"w": torch.full((4,), float(step))})
    (writer.tmp / "blob.bin").write_bytes(payload)
    return writer.commit({"step": step})


def test_commit_is_atomic_and_verified(tmp_path):
    path = write(tmp_path, 3)
    assert path.name == "step-00000003" and verify(path) is None
    assert not list(tmp_path.glob(".tmp-*"))


def test_flipped_byte_truncation_and_partial_checkpoints_are_skipped(tmp_path):
    good = write(tmp_path, 1)
    flipped = write(tmp_path, 2)
    data = bytearray((flipped / "blob.bin").read_bytes())
    data[10] ^= 0xFF
    (flipped / "blob.bin").write_bytes(bytes(data))
    truncated = write(tmp_path, 3)
    with (truncated / "model.safetensors").open("r+b") as f:
        f.truncate(10)
    partial = tmp_path / "step-00000004"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    with pytest.warns(UserWarning) as caught:
        assert find_resumable(tmp_path) == good
    messages = [str(w.message) for w in caught]
    assert any("step-00000004" in m and "no manifest.json" in m for m in messages)
    assert any("model.safetensors: size 10" in m and "truncated" in m for m in messages)
    assert any("blob.bin: checksum mismatch" in m for m in messages)


def test_prune_keeps_the_newest_and_clears_dead_temp_dirs(tmp_path):
    for step in (1, 2, 3, 4):
        write(tmp_path, step)
    dead = tmp_path / ".tmp-step-00000005-999999999"
    dead.mkdir()
    alive = tmp_path / f".tmp-step-00000006-{os.getpid()}"
    alive.mkdir()
    prune(tmp_path, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000004", "step-00000003"]
    assert not dead.exists() and alive.exists()


def test_optimizer_state_round_trips_by_name_and_new_params_start_empty(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    names = {p: n for n, p in model.named_parameters()}
    torch.save(optimizer_state_by_name(optimizer, names), tmp_path / "opt.pt")
    saved = load_torch(tmp_path / "opt.pt")
    bigger = torch.nn.ModuleDict({"old": torch.nn.Linear(3, 2), "new": torch.nn.Linear(2, 2)})
    bigger["old"].load_state_dict(model.state_dict())
    fresh = torch.optim.AdamW(bigger.parameters())
    params = {
        n.removeprefix("old."): p for n, p in bigger.named_parameters() if n.startswith("old.")
    }
    params |= {n: p for n, p in bigger.named_parameters() if n.startswith("new.")}
    missing = load_optimizer_state_by_name(fresh, saved, params)
    assert missing == ["new.bias", "new.weight"]
    old_weight = bigger["old"].weight
    assert torch.equal(fresh.state[old_weight]["exp_avg"], optimizer.state[model.weight]["exp_avg"])


def test_pickles_with_code_are_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    torch.save({"state": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match=r"Weights only load failed|Unsupported global"):
        load_torch(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()


def test_a_copy_moved_aside_by_a_killed_replacing_writer_is_put_back(tmp_path):
    from ernie_style.train.checkpoint import CheckpointWriter, find_resumable, recover_replaced

    writer = CheckpointWriter(tmp_path, 4)
    writer.save_text("a.txt", "old")
    final = writer.commit()
    dead_pid = 2**22 + 7  # above the default pid_max: no such process
    os.replace(final, tmp_path / f".trash-{final.name}-{dead_pid}")
    assert find_resumable(tmp_path) == final  # put back before the search
    assert (final / "a.txt").read_text() == "old"
    # With step-N present again, a leftover moved-aside copy is simply dropped.
    (tmp_path / f".trash-{final.name}-{dead_pid}").mkdir()
    recover_replaced(tmp_path)
    assert not list(tmp_path.glob(".trash-*"))


def test_replacing_a_checkpoint_never_leaves_the_step_missing(tmp_path, monkeypatch):
    import ernie_style.fileio as fileio
    from ernie_style.train.checkpoint import CheckpointWriter, find_resumable

    writer = CheckpointWriter(tmp_path, 4)
    writer.save_text("a.txt", "old")
    final = writer.commit()
    # A system without the atomic exchange: the old copy is renamed aside first. A writer
    # killed between the two renames leaves `.step-N.old-PID-TOKEN` and no step-N...
    monkeypatch.setattr(fileio, "_exchange", lambda new, target: False)
    dead_pid = 2**22 + 7  # above the default pid_max: no such process
    os.replace(final, tmp_path / f".{final.name}.old-{dead_pid}-beef")
    assert find_resumable(tmp_path) == final  # ...which the next search puts back
    assert (final / "a.txt").read_text() == "old"
    # A completed replacement (rename-aside path) has the new copy in place and nothing aside.
    writer = CheckpointWriter(tmp_path, 4)
    writer.save_text("a.txt", "new")
    assert writer.commit() == final and (final / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [final.name]
