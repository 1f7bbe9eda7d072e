"""Confidence scoring for active learning: EC and DA on stub models with known outputs, pool
reading and encoding, and a tiny real fine-tuning run loaded back and scored end to end."""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ernie_style.active_learning.pool import (
    encode_pool,
    input_fields,
    read_pool,
    write_pool_without,
)
from ernie_style.active_learning.scoring import pass_agreement, predict_pool, score_pool
from ernie_style.config import load_config
from ernie_style.finetune.config import FinetuneConfig
from ernie_style.finetune.data import Collator, EncodedTask
from ernie_style.finetune.loading import load_finetuned
from ernie_style.finetune.readers import DataError
from ernie_style.finetune.trainer import FinetuneTrainer
from ernie_style.testing.finetune import ROOT, make_encoder_dir, write_config

DATA = ROOT / "data" / "finetune"


# ---- stubs with known outputs -------------------------------------------------------------
def shell(name: str, task_type: str, labels: list[str] | None) -> EncodedTask:
    return EncodedTask(name, task_type, labels, {}, {}, Collator(task_type, 0))


def seq_examples(n: int) -> list[dict]:
    return [{"input_ids": [2, 5, 3], "token_type_ids": [0, 0, 0], "labels": 0}] * n


def token_examples(n: int) -> list[dict]:
    # 5 positions; words 0 and 1 start at positions 1 and 3 (2 and 4 are continuation pieces)
    labels = [-100, 0, -100, 1, -100]
    return [{"input_ids": [2, 5, 6, 7, 3], "token_type_ids": [0] * 5, "labels": labels}] * n


def ranking_examples(counts: list[int]) -> list[dict]:
    return [
        {"input_ids": [[2, 5, 3]] * k, "token_type_ids": [[0, 0, 0]] * k, "labels": [0.0] * k}
        for k in counts
    ]


class FixedLogits(nn.Module):
    """Returns `row` as the logits of every example (every position for token tasks)."""

    def __init__(self, row: list[float]) -> None:
        super().__init__()
        self.row = torch.tensor(row)
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, batch: dict) -> torch.Tensor:
        ids = batch["input_ids"]
        logits = self.row.expand(*ids.shape, len(self.row)).clone()
        if "candidate_mask" in batch:  # ranking: one score per candidate
            scores = logits[..., 0, 0] * 0 + self.row[: ids.shape[1]]
            return scores.masked_fill(~batch["candidate_mask"], torch.finfo(scores.dtype).min)
        return logits if batch["task"] == "tok" else logits[:, 0]


class Flipping(nn.Module):
    """Eval mode: always class 0. Train mode: class (call count % 2) at word 1 of token
    batches and for sequence batches; word 0 stays class 0 (full agreement)."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.classes, self.calls = classes, 0
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, batch: dict) -> torch.Tensor:
        ids = batch["input_ids"]
        logits = torch.zeros(*ids.shape, self.classes)
        logits[..., 0] = 5.0
        if self.training:
            flip = self.calls % 2
            self.calls += 1
            if batch["task"] == "tok":
                logits[:, 3] = 0.0
                logits[:, 3, flip] = 5.0
            else:
                logits[:, :, 0] = 0.0
                logits[:, :, flip] = 5.0
        return logits if batch["task"] == "tok" else logits[:, 0]


def ec(model: nn.Module, task: EncodedTask, examples: list[dict], **kw) -> np.ndarray:
    scores = score_pool(model, {task.name: task}, {task.name: examples}, progress=False, **kw)
    return scores.confidences[:, 0]


def test_uniform_logits_give_ec_zero_and_peaked_logits_ec_one():
    cls = shell("cls", "classification", ["a", "b", "c", "d"])
    tok = shell("tok", "token_classification", ["O", "B", "I"])
    rank = shell("rank", "ranking", None)
    assert np.allclose(ec(FixedLogits([0.0] * 4), cls, seq_examples(5)), 0.0, atol=1e-6)
    assert np.allclose(ec(FixedLogits([0.0] * 3), tok, token_examples(3)), 0.0, atol=1e-6)
    uniform = ec(FixedLogits([0.0] * 4), rank, ranking_examples([4, 2, 3]))
    assert np.allclose(uniform, 0.0, atol=1e-6)  # each normalised by its own candidate count
    assert np.all(ec(FixedLogits([40.0, 0, 0, 0]), cls, seq_examples(2)) > 0.999)
    assert np.all(ec(FixedLogits([0.0, 40.0, 0]), tok, token_examples(2)) > 0.999)
    assert np.all(ec(FixedLogits([40.0, 0, 0, 0]), rank, ranking_examples([4, 2])) > 0.999)


def test_ec_equals_one_minus_normalised_entropy():
    probs = [0.5, 0.25, 0.25]
    entropy = -sum(p * math.log(p) for p in probs)
    expected = 1 - entropy / math.log(3)
    row = [math.log(p) for p in probs]
    got = ec(FixedLogits(row), shell("cls", "classification", ["a", "b", "c"]), seq_examples(2))
    assert got == pytest.approx([expected] * 2, abs=1e-6)
    tok = shell("tok", "token_classification", ["O", "B", "I"])
    assert ec(FixedLogits(row), tok, token_examples(1), precision="no") == pytest.approx(
        [expected], abs=1e-6
    )
    rank = ec(FixedLogits(row), shell("rank", "ranking", None), ranking_examples([3]))
    assert rank == pytest.approx([expected], abs=1e-6)


def test_token_ec_averages_only_the_labelled_positions():
    """Continuation pieces and padding are uniform (entropy 1) and must not count."""

    class Mixed(nn.Module):
        def forward(self, batch):
            logits = torch.zeros(*batch["input_ids"].shape, 3)
            logits[:, 1] = torch.tensor([40.0, 0, 0])  # word 0: certain
            logits[:, 3] = torch.tensor([0.0, 0, 0])  # word 1: uniform
            return logits

    tok = shell("tok", "token_classification", ["O", "B", "I"])
    short = {"input_ids": [2, 5, 3], "token_type_ids": [0] * 3, "labels": [-100, 0, -100]}
    examples = [*token_examples(1), short]
    got = ec(Mixed(), tok, examples, device="cpu")
    assert got == pytest.approx([0.5, 1.0], abs=1e-4)


def test_dropout_agreement_is_one_without_randomness_and_exact_for_flips():
    cls = shell("cls", "classification", ["a", "b", "c"])
    tok = shell("tok", "token_classification", ["O", "B", "I"])
    fixed = FixedLogits([0.3, 0.1, 0.2])
    assert np.all(ec(fixed, cls, seq_examples(3), method="da") == 1.0)
    assert np.all(ec(fixed, tok, token_examples(3), method="da") == 1.0)
    # 10 passes alternating between two classes: 2 * C(5, 2) of C(10, 2) pairs agree
    assert ec(Flipping(), cls, seq_examples(1), method="da") == pytest.approx([20 / 45])
    # 3 passes (0, 1, 0): 1 of 3 pairs agree; token: word 0 agrees always, word 1 flips
    assert ec(Flipping(), cls, seq_examples(1), method="da", passes=3) == pytest.approx([1 / 3])
    got = ec(Flipping(), tok, token_examples(1), method="da", passes=3)
    assert got == pytest.approx([(1 + 1 / 3) / 2])
    with pytest.raises(ValueError, match="at least 2 passes"):
        ec(fixed, cls, seq_examples(1), method="da", passes=1)


def test_pass_agreement_matches_the_pairwise_definition():
    rng = torch.Generator().manual_seed(0)
    preds = torch.randint(0, 4, (6, 5, 7), generator=rng)
    mask = torch.rand(5, 7, generator=rng) > 0.3
    mask[0] = False
    got = pass_agreement(preds, 4, mask)
    for b in range(5):
        words = mask[b].nonzero().flatten().tolist()
        if not words:
            assert got[b] == 1.0
            continue
        pairs = [
            np.mean([preds[i, b, w] == preds[j, b, w] for w in words])
            for i, j in itertools.combinations(range(6), 2)
        ]
        assert float(got[b]) == pytest.approx(float(np.mean(pairs)))


def test_regression_is_refused_and_predictions_are_readable():
    reg = shell("reg", "regression", None)
    with pytest.raises(ValueError, match="regression"):
        ec(FixedLogits([0.0]), reg, seq_examples(1))
    tok = shell("tok", "token_classification", ["O", "B", "I"])
    scores = score_pool(
        FixedLogits([0.0, 9.0, 1.0]), {"tok": tok}, {"tok": token_examples(2)}, progress=False
    )
    assert scores.predictions == {"tok": [["B", "B"], ["B", "B"]]}
    cls = shell("cls", "classification", ["a", "b"])
    rank = shell("rank", "ranking", None)
    predicted = predict_pool(
        FixedLogits([1.0, 3.0, 2.0]),
        {"cls": cls, "rank": rank},
        {"cls": seq_examples(2), "rank": ranking_examples([3, 2])},
        progress=False,
    )
    assert predicted == {"cls": ["b", "b"], "rank": [1, 1]}


# ---- the pool -----------------------------------------------------------------------------
def test_pool_errors_name_the_line(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text('{"id": "a", "tokens": ["x"]}\n{"tokens": ["y"]}\n{"id": "a", "t": 1}\n')
    with pytest.raises(DataError) as error:
        read_pool(path)
    assert "pool.jsonl:2" in str(error.value) and "pool.jsonl:3: duplicate id 'a'" in str(
        error.value
    )
    path.write_text('{"id": "", "tokens": ["x"]}\n')
    with pytest.raises(DataError, match=r"pool.jsonl:1: missing or empty 'id'"):
        read_pool(path)
    path.write_text("\n")
    with pytest.raises(DataError, match="empty"):
        read_pool(path)
    tsv = tmp_path / "pool.tsv"
    tsv.write_text("id\ttext\n1\tfirst\n2\tsecond\n3\tthird\n")
    assert read_pool(tsv).ids == ["1", "2", "3"]
    assert write_pool_without(tsv, ["2", "9"]) == 1
    assert tsv.read_text() == "id\ttext\n1\tfirst\n3\tthird\n"


def test_pool_fields_follow_the_tasks_and_saved_datasets_work(tmp_path):
    config = load_config(FinetuneConfig, ROOT / "configs" / "finetune" / "wnut16_silver.yaml")
    assert input_fields(config.task("wnut16_spacy_ner"), config) == ["tokens"]  # its source's
    assert input_fields(config.task("sentiment"), config) == ["text"]
    with pytest.raises(ValueError, match="needs a token-classification silver_source"):
        input_fields(config.task("sentiment_pos"), config)
    import datasets

    path = tmp_path / "pool_ds"
    rows = {"id": [1, 2, 3], "tokens": [["a", "b"], ["c"], ["d", "e"]]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(path))
    pool = read_pool(path)
    assert pool.ids == ["1", "2", "3"] and pool.records[0].where.endswith("pool_ds: row 0")
    assert write_pool_without(path, {"2"}) == 1
    assert read_pool(path).ids == ["1", "3"]


# ---- a real tiny fine-tuned run -----------------------------------------------------------
def _rows(path: Path, limit: int) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()[:limit]]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """A 3-task run (token, classification, ranking) on small extracts of the shipped data."""
    root = tmp_path_factory.mktemp("al_scoring")
    encoder = make_encoder_dir(root / "encoder")
    data = root / "data"
    data.mkdir()
    for split, n in (("train", 48), ("dev", 16)):
        (data / f"ner_{split}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in _rows(DATA / "wnut16" / f"{split}.jsonl", n))
        )
        (data / f"rank_{split}.jsonl").write_text(
            "".join(
                json.dumps(r) + "\n" for r in _rows(DATA / "wiki_ranking" / f"{split}.jsonl", n)
            )
        )
        lines = (DATA / "sentiment" / f"{split}.tsv").read_text().splitlines()
        (data / f"cls_{split}.tsv").write_text("\n".join(lines[: n + 1]) + "\n")
    tags = sorted({t for r in _rows(DATA / "wnut16" / "train.jsonl", 400) for t in r["tags"]})
    tasks = [
        {
            "name": "ner",
            "type": "token_classification",
            "data": {s: str(data / f"ner_{s}.jsonl") for s in ("train", "dev")},
            "text_fields": ["tokens"],
            "labels": tags,
        },
        {
            "name": "cls",
            "type": "classification",
            "data": {s: str(data / f"cls_{s}.tsv") for s in ("train", "dev")},
            "text_fields": ["text"],
            "labels": ["neg", "pos"],
        },
        {
            "name": "rank",
            "type": "ranking",
            "data": {s: str(data / f"rank_{s}.jsonl") for s in ("train", "dev")},
            "query_field": "query",
            "candidates_field": "candidates",
            "batch_size": 8,
        },
    ]
    config = write_config(root / "run.yaml", encoder, root / "run", tasks, epochs=1, max_seq_len=64)
    trainer = FinetuneTrainer(load_config(FinetuneConfig, config, []))
    trainer.train()
    tweets = _rows(DATA / "wnut16" / "test.jsonl", 12)
    queries = _rows(DATA / "wiki_ranking" / "test.jsonl", 12)
    pool = root / "pool.jsonl"
    pool.write_text(
        "".join(
            json.dumps(
                {
                    "id": f"p{i}",
                    "tokens": t["tokens"],
                    "text": " ".join(t["tokens"]),
                    "query": q["query"],
                    "candidates": q["candidates"],
                }
            )
            + "\n"
            for i, (t, q) in enumerate(zip(tweets, queries, strict=True))
        )
    )
    return {"trainer": trainer, "run_dir": root / "run", "pool": pool, "root": root}


def test_load_finetuned_rebuilds_the_trained_model(run):
    model, _, config, tasks = load_finetuned(run["run_dir"])
    assert list(tasks) == ["ner", "cls", "rank"] and not model.training
    assert tasks["cls"].labels == ["neg", "pos"] and tasks["rank"].labels is None
    trained = run["trainer"].unwrapped.eval()
    for name, task in run["trainer"].tasks.items():
        batch = task.collator(task.splits["dev"][:4])
        batch.pop("labels")
        with torch.no_grad():
            expected = trained(batch | {"task": name}).logits
            got = model(batch | {"task": name}).logits
        torch.testing.assert_close(got, expected)
    # without best/, the newest checkpoint is used
    copy = run["root"] / "no_best"
    shutil.copytree(run["run_dir"], copy)
    shutil.rmtree(copy / "best")
    assert load_finetuned(copy)[2].task("ner").labels == config.task("ner").labels
    shutil.rmtree(copy / "checkpoints")
    with pytest.raises(ValueError, match="no weights"):
        load_finetuned(copy)
    # the encoder directory gone: architecture and tokenizer come from a task export
    moved = run["root"] / "moved"
    shutil.copytree(run["run_dir"], moved)
    text = (moved / "config.yaml").read_text().replace(config.encoder, str(run["root"] / "gone"))
    assert "gone" in text
    (moved / "config.yaml").write_text(text)
    again = load_finetuned(moved)[0]
    batch = run["trainer"].tasks["cls"].collator(run["trainer"].tasks["cls"].splits["dev"][:3])
    batch.pop("labels")
    with torch.no_grad():
        torch.testing.assert_close(
            again(batch | {"task": "cls"}).logits, model(batch | {"task": "cls"}).logits
        )


def test_a_real_model_scores_the_pool_with_ec_and_reproducible_da(run):
    model, tokenizer, config, tasks = load_finetuned(run["run_dir"])
    pool = read_pool(run["pool"])
    encoded = {t: encode_pool(pool, config.task(t), config, tokenizer) for t in tasks}
    ec_scores = score_pool(model, tasks, encoded, progress=False)
    assert ec_scores.confidences.shape == (12, 3) and ec_scores.tasks == ["ner", "cls", "rank"]
    assert np.all((ec_scores.confidences >= 0) & (ec_scores.confidences <= 1))
    assert ec_scores.confidences[:, 0].std() > 0  # tweets differ
    words = [len(r.fields["tokens"]) for r in pool.records]
    assert [len(p) for p in ec_scores.predictions["ner"]] == words
    cut = [p for p in ec_scores.predictions["ner"] if None in p]  # max_seq_len 64 cuts some
    assert cut and all(p[-1] is None and p[0] is not None for p in cut)
    assert set(ec_scores.predictions["cls"]) <= {"neg", "pos"}
    assert all(0 <= i < 4 for i in ec_scores.predictions["rank"])
    da = [
        score_pool(model, tasks, encoded, method="da", passes=2, seed=s, progress=False)
        for s in (0, 0, 1)
    ]
    np.testing.assert_array_equal(da[0].confidences, da[1].confidences)
    assert not np.array_equal(da[0].confidences, da[2].confidences)
    assert np.all((da[0].confidences >= 0) & (da[0].confidences <= 1))
    assert da[0].predictions == ec_scores.predictions  # pre-annotations come from eval mode
    assert not model.training
