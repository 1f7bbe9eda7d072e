"""Per-rank step batches from loader workers: shares, worker equivalence, exact resume."""

from __future__ import annotations

import copy

import pytest
import torch

from ernie_style.pretrain.examples import CorpusContext
from ernie_style.pretrain.loader import DataStreams, StepLayout
from ernie_style.pretrain.registry import get_task
from ernie_style.pretrain.schedule import ContinualSchedule

TASKS = ("capitalization", "sentence_distance")


@pytest.fixture(scope="module")
def setup(wiki_documents, wiki_tokenizer):
    corpus = CorpusContext(wiki_documents[:24], wiki_tokenizer)
    tasks = {name: get_task(name)(wiki_tokenizer, max_seq_len=48) for name in TASKS}
    return corpus, tasks, wiki_tokenizer.pad_token_id


def schedule() -> ContinualSchedule:
    return ContinualSchedule([{"capitalization": 4}, {"capitalization": 3, "sentence_distance": 5}])


def run(setup, *, rank=0, world=1, workers=0, state=None, sched=None, accum=1):
    corpus, tasks, pad = setup
    layout = StepLayout(
        batch_size=8, grad_accum_steps=accum, rank=rank, world=world, num_workers=workers
    )
    streams = DataStreams(tasks, corpus, seed=3, layout=layout)
    message = streams.load_state_dict(state) if state is not None else None
    sched = sched or schedule()
    batches = []
    for batch in streams.loader(sched, pad):
        streams.consumed(batch)
        batches.append(batch)
    return batches, streams, message


def same(a, b):
    return (
        a["step"] == b["step"]
        and a["tasks"] == b["tasks"]
        and all(
            torch.equal(x[k], y[k])
            for task in a["batches"]
            for x, y in zip(a["batches"][task], b["batches"][task], strict=True)
            for k in ("input_ids", "token_type_ids", "labels")
        )
    )


def test_each_rank_builds_only_its_share_of_every_step(setup):
    whole, _, _ = run(setup)
    ranks = [run(setup, rank=r, world=2, accum=2)[0] for r in (0, 1)]
    assert [b["step"] for b in ranks[0]] == list(range(12)) == [b["step"] for b in whole]
    for step, (zero, one) in enumerate(zip(*ranks, strict=True)):
        assert zero["tasks"] == one["tasks"] == whole[step]["tasks"]
        for task in zero["tasks"]:
            # 8 examples a step over 2 ranks x 2 micro-batches: 2 rows each, from its own shard.
            assert [len(m["input_ids"]) for m in zero["batches"][task]] == [2, 2]
            assert zero["states"][task]["shard"] == 0 and one["states"][task]["shard"] == 1

    def rows(batches):
        return {
            tuple(row.tolist())
            for b in batches
            for m in b["batches"].get("capitalization", [])
            for row in m["input_ids"]
        }

    assert rows(ranks[0]) and not rows(ranks[0]) & rows(ranks[1])  # different documents


def test_worker_processes_build_the_same_batches_as_the_training_process(setup):
    in_process, streams_a, _ = run(setup, workers=0)
    one_worker, streams_b, _ = run(setup, workers=1)
    assert len(in_process) == len(one_worker) == 12
    assert all(same(a, b) for a, b in zip(in_process, one_worker, strict=True))
    assert streams_a.state_dict() == streams_b.state_dict()


def test_two_workers_deliver_steps_in_order_and_resume_exactly(setup):
    reference, _, _ = run(setup, workers=2)
    assert [b["step"] for b in reference] == list(range(12))
    assert [b["slot"] for b in reference] == [s % 2 for s in range(12)]
    # Stop after 5 consumed steps (a prefetching loader has built more), save, resume.
    corpus, tasks, pad = setup
    layout = StepLayout(batch_size=8, num_workers=2)
    streams, sched = DataStreams(tasks, corpus, seed=3, layout=layout), schedule()
    iterator = iter(streams.loader(copy.deepcopy(sched), pad, prefetch_factor=4))
    for _ in range(5):
        streams.consumed(next(iterator))
        layout.sample_tasks(sched)
    del iterator
    saved = streams.state_dict()
    resumed, _, message = run(setup, workers=2, state=saved, sched=sched)
    assert message is None
    assert [b["step"] for b in resumed] == list(range(5, 12))
    assert all(same(a, b) for a, b in zip(reference[5:], resumed, strict=True))


def test_a_different_layout_is_an_elastic_resume_that_says_so(setup):
    corpus, tasks, pad = setup
    streams = DataStreams(tasks, corpus, seed=3, layout=StepLayout(batch_size=8, num_workers=0))
    sched = schedule()
    for batch in streams.loader(copy.deepcopy(sched), pad):
        streams.consumed(batch)
        layout_step = batch["step"]
        if layout_step == 3:
            break
    saved = streams.state_dict()
    _, resumed, message = run(setup, world=2, rank=1, workers=2, state=saved)
    assert "elastic resume" in message and "from 1 to 4" in message
    saved_again = resumed.state_dict()["capitalization"]
    assert saved_again["num_shards"] == 4
    # Batches report positions without the carry list; the saved state keeps it, with the
    # number of carry units finished.
    mine = saved_again["shards"][0]  # gather-less state_dict: this rank's slots only
    assert mine["shard"] == 2 and mine["carry"] and mine["carry_done"] > 0


def test_indexes_are_built_once_on_disk_and_a_new_task_builds_its_own(small_corpus, tmp_path):
    from ernie_style.config import load_config
    from ernie_style.pretrain.config import PretrainConfig
    from ernie_style.pretrain.state import build_run_state
    from ernie_style.testing.pretrain import write_config

    index_dir = tmp_path / "shared_indexes"
    path = write_config(
        tmp_path / "a.yaml", small_corpus, tmp_path / "run", data__index_dir=str(index_dir)
    )
    state = build_run_state(load_config(PretrainConfig, path))
    (root,) = index_dir.iterdir()  # one folder per corpus fingerprint
    assert root.name.startswith("corpus-")
    built = [p for p in root.iterdir() if not p.name.startswith(".")]  # not the build locks
    assert [p.name.split("-")[0] for p in built] == ["tokens"]
    assert state.streams.streams[0]["capitalization"].corpus.token_table() is not None
    # A run that adds IR relevance builds its BM25 index there on first use; the token table
    # is reused (same files), not rebuilt.
    table_files = {p: p.stat().st_mtime_ns for p in root.rglob("*.npy")}
    tasks = {"capitalization": {"budget": 4}, "ir_relevance": {"budget": 4}}
    path = write_config(
        tmp_path / "b.yaml",
        small_corpus,
        tmp_path / "run",
        tasks=tasks,
        data__index_dir=str(index_dir),
    )
    build_run_state(load_config(PretrainConfig, path))
    built = [p for p in root.iterdir() if not p.name.startswith(".")]
    names = sorted(p.name.rsplit("-", 2)[0].split("-")[0] for p in built)
    assert names == ["ir_relevance", "tokens"]
    assert all(p.stat().st_mtime_ns == t for p, t in table_files.items())
