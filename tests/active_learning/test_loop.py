"""The annotation loop on the shipped WNUT-16 example (gold NER + spaCy POS): `select` scores
the pool with a tiny fine-tuned model and writes a pre-annotated batch, `ingest` validates the
annotated batch, merges it into the labeled set, shrinks the pool and records the round."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from ernie_style.active_learning.loop import STATE_FILE, load_state
from ernie_style.active_learning.pool import TaskSpec, normalize_label
from ernie_style.commands import ingest, select
from ernie_style.config import load_config
from ernie_style.finetune.config import FinetuneConfig
from ernie_style.finetune.data import load_tasks
from ernie_style.finetune.model import load_finetune_tokenizer
from ernie_style.finetune.readers import DataError
from ernie_style.finetune.trainer import FinetuneTrainer
from ernie_style.testing.finetune import ROOT, make_encoder_dir, write_config

EXAMPLE = ROOT / "data" / "active_learning" / "wnut16"
SHIPPED = ROOT / "configs" / "active_learning" / "wnut16_pos.yaml"
POOL = 48  # pool records used by the loop tests (of 360), to keep them fast


def cli(*argv: object) -> int:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers()
    select.register(commands)
    ingest.register(commands)
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def snapshot(*roots: Path) -> dict[str, bytes]:
    files = [p for root in roots for p in ([root] if root.is_file() else sorted(root.rglob("*")))]
    return {str(p): p.read_bytes() for p in files if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """One short fine-tuning run of the shipped config's two tasks on its seed set."""
    root = tmp_path_factory.mktemp("al_loop")
    encoder = make_encoder_dir(root / "encoder")
    tasks = yaml.safe_load(SHIPPED.read_text())["tasks"]
    for task in tasks:
        task["data"]["train"] = str(ROOT / task["data"]["train"])
        dev = root / f"{task['name']}_dev.jsonl"  # a short dev set: a faster run
        dev.write_text("".join((ROOT / task["data"]["dev"]).read_text().splitlines(True)[:16]))
        task["data"]["dev"] = str(dev)
    config = write_config(root / "run.yaml", encoder, root / "run", tasks, epochs=1, batch_size=8)
    FinetuneTrainer(load_config(FinetuneConfig, config, [])).train()
    return root / "run"


@pytest.fixture
def work(tmp_path) -> Path:
    """A copy of the example: pool.jsonl, labeled/ (the seed set), oracle/."""
    shutil.copytree(EXAMPLE, tmp_path / "al")
    shutil.copytree(tmp_path / "al" / "seed", tmp_path / "al" / "labeled")
    pool = tmp_path / "al" / "pool.jsonl"
    pool.write_text("".join(pool.read_text().splitlines(True)[:POOL]))
    return tmp_path / "al"


def annotate(batch: Path, out: Path, oracle: Path) -> Path:
    """Replace the pre-annotations by the oracle's labels."""
    truth = {
        t: {r["id"]: r["tags"] for r in read_jsonl(oracle / f"{t}.jsonl")} for t in ("ner", "pos")
    }
    lines = read_jsonl(batch)
    for line in lines:
        line["labels"] = {t: truth[t][line["id"]] for t in ("ner", "pos")}
    return write_jsonl(out, lines)


def select_args(run: Path, work: Path, *extra: object) -> list[object]:
    return [
        "select", "--model", run, "--pool", work / "pool.jsonl", "--tasks", "ner,pos",
        "--budget", 12, "--labeled", work / "labeled", *extra,
    ]  # fmt: skip


def test_shipped_config_and_data_fit_together():
    config = load_config(FinetuneConfig, SHIPPED)
    assert [t.name for t in config.tasks] == ["ner", "pos"]
    pool = read_jsonl(EXAMPLE / "pool.jsonl")
    seed = {t: read_jsonl(EXAMPLE / "seed" / f"{t}.jsonl") for t in ("ner", "pos")}
    oracle = {t: read_jsonl(EXAMPLE / "oracle" / f"{t}.jsonl") for t in ("ner", "pos")}
    assert len(pool) == 360 and all(len(rows) == 40 for rows in seed.values())
    pool_ids = [r["id"] for r in pool]
    assert not set(pool_ids) & {r["id"] for r in seed["ner"]}
    for task in ("ner", "pos"):
        assert [r["id"] for r in oracle[task]] == pool_ids
        assert [r["id"] for r in seed[task]] == [r["id"] for r in seed["ner"]]
        assert all(len(r["tokens"]) == len(r["tags"]) for r in oracle[task] + seed[task])


def test_labels_of_every_task_type_are_checked():
    def spec(kind, labels=None):
        fields = {"ranking": ["q", "cands"], "token_classification": ["tokens"]}.get(kind, ["t"])
        return TaskSpec("t", kind, labels, fields, "label")

    cls = spec("classification", ["neg", "pos"])
    assert normalize_label(cls, " pos ") == "pos"
    with pytest.raises(DataError, match="label 'meh' not in labels"):
        normalize_label(cls, "meh")
    with pytest.raises(DataError, match="no label"):
        normalize_label(cls, None)
    assert normalize_label(spec("regression"), "0.5") == 0.5
    with pytest.raises(DataError, match="not a finite number"):
        normalize_label(spec("regression"), "nan")
    rank = spec("ranking")
    assert normalize_label(rank, 2, size=4) == 2 and normalize_label(rank, [0, 1], 2) == [0.0, 1.0]
    with pytest.raises(DataError, match=r"not a candidate index \(0..3\)"):
        normalize_label(rank, 4, size=4)
    with pytest.raises(DataError, match="3 grades for 4 candidates"):
        normalize_label(rank, [0, 0, 1], size=4)
    tok = spec("token_classification", ["O", "B-x"])
    assert normalize_label(tok, "O B-x", size=2) == ["O", "B-x"]
    with pytest.raises(DataError, match="2 words but 1 tags"):
        normalize_label(tok, ["O"], size=2)


def test_select_writes_a_preannotated_batch_and_records_the_round(run, work, capsys):
    output = work / "batch.jsonl"
    scores = work / "scores.npy"
    argv = select_args(run, work, "--strategy", "mt-avg", "--output", output)
    assert cli(*argv, "--save-confidences", scores) == 0
    assert "round 1" in capsys.readouterr().out
    lines = read_jsonl(output)
    assert len(lines) == 12 and len({x["id"] for x in lines}) == 12
    pool = {r["id"]: r for r in read_jsonl(work / "pool.jsonl")}
    config = load_config(FinetuneConfig, SHIPPED)
    ner_labels = set(config.task("ner").label_list)
    for line in lines:
        assert line["tokens"] == pool[line["id"]]["tokens"]
        assert line["labels"] == line["predictions"]
        assert len(line["labels"]["ner"]) == len(line["tokens"]) == len(line["labels"]["pos"])
        assert set(line["labels"]["ner"]) <= ner_labels
        assert all(0 <= c <= 1 for c in line["confidence"].values())
        assert line["selection"]["strategy"] == "mt-avg"
        assert line["selection"]["method"] == "ec"
    assert [x["selection"]["rank"] for x in lines] == list(range(12))
    # mt-avg: the selected examples have the lowest mean confidence over the two tasks
    confidences = np.load(scores)
    assert confidences.shape == (POOL, 2) and np.isfinite(confidences).all()
    row = {key: i for i, key in enumerate(pool)}
    chosen = [row[x["id"]] for x in lines]
    means = confidences.mean(axis=1)
    assert means[chosen].max() <= np.delete(means, chosen).min()
    state = load_state(work / "labeled")
    (entry,) = state["rounds"]
    assert entry["round"] == 1 and entry["selected"] == [x["id"] for x in lines]
    assert entry["budget"] == 12 and entry["ingested"] == {} and entry["ingested_at"] is None
    assert not [p for p in work.rglob("*") if ".tmp" in p.name]
    # selecting again from precomputed scores: same batch, no model predictions
    again = work / "again.jsonl"
    argv = select_args(run, work, "--strategy", "mt-avg", "--output", again)
    argv[argv.index("--model") : argv.index("--model") + 2] = ["--confidences", scores]
    assert cli(*argv) == 0
    reused = read_jsonl(again)
    assert [x["id"] for x in reused] == [x["id"] for x in lines]
    assert all(x["labels"] == {"ner": None, "pos": None} for x in reused)
    assert all("predictions" not in x for x in reused)


def test_select_with_dropout_agreement_and_a_single_task_strategy(run, work):
    output = work / "da.jsonl"
    argv = select_args(run, work, "--strategy", "st-da", "--task", "pos", "--passes", 2)
    assert cli(*argv, "--output", output, "--save-confidences", work / "da.npy") == 0
    lines = read_jsonl(output)
    assert all(x["selection"]["method"] == "da" for x in lines)
    chosen = [x["confidence"]["pos"] for x in lines]
    assert chosen == sorted(chosen)  # st-da: least confident in pos first
    rows = {r["id"]: i for i, r in enumerate(read_jsonl(work / "pool.jsonl"))}
    pos = np.load(work / "da.npy")[:, 1]
    assert max(chosen) <= np.delete(pos, [rows[x["id"]] for x in lines]).min()
    assert pos[rows[lines[0]["id"]]] == chosen[0]
    with pytest.raises(ValueError, match="selects by DA"):
        cli(*argv, "--output", output, "--method", "ec")


def test_select_refuses_bad_inputs(run, work):
    output = work / "batch.jsonl"
    with pytest.raises(ValueError, match=r"\['sentiment'\] not in the model; its tasks are"):
        cli("select", "--model", run, "--pool", work / "pool.jsonl", "--tasks", "ner,sentiment",
            "--strategy", "mt-avg", "--budget", 3, "--output", output)  # fmt: skip
    with pytest.raises(ValueError, match="unknown 'mt-magic'"):
        cli(*select_args(run, work, "--strategy", "mt-magic", "--output", output))
    with pytest.raises(ValueError, match="2 weights for 1 tasks"):
        cli("select", "--confidences", work / "x.npy", "--pool", work / "pool.jsonl",
            "--tasks", "ner", "--weights", "1,2", "--strategy", "mt-avg", "--budget", 3,
            "--output", output)  # fmt: skip
    np.save(work / "short.npy", np.zeros((5, 2)))
    with pytest.raises(ValueError, match=rf"shape \(5, 2\), expected \({POOL}, 2\)"):
        cli("select", "--confidences", work / "short.npy", "--pool", work / "pool.jsonl",
            "--tasks", "ner,pos", "--strategy", "mt-avg", "--budget", 3,
            "--output", output)  # fmt: skip
    # labelled ids are never selected; when all are labelled, nothing is left
    pool = read_jsonl(work / "pool.jsonl")
    labeled = work / "labeled"
    write_jsonl(labeled / "ner.jsonl", [r | {"tags": ["O"] * len(r["tokens"])} for r in pool[:-3]])
    assert cli(*select_args(run, work, "--strategy", "random", "--output", output)) == 0
    assert {x["id"] for x in read_jsonl(output)} == {r["id"] for r in pool[-3:]}
    write_jsonl(labeled / "pos.jsonl", [r | {"tags": ["X"] * len(r["tokens"])} for r in pool])
    with pytest.raises(ValueError, match="every example is already labelled"):
        cli(*select_args(run, work, "--strategy", "random", "--output", output))


def test_ingest_merges_idempotently_shrinks_the_pool_and_updates_the_state(run, work, capsys):
    batch = work / "batch.jsonl"
    cli(*select_args(run, work, "--strategy", "mt-rrf", "--output", batch))
    annotated = annotate(batch, work / "annotated.jsonl", work / "oracle")
    ids = [x["id"] for x in read_jsonl(annotated)]
    argv = ["ingest", "--batch", annotated, "--labeled", work / "labeled", "--tasks", "ner,pos",
            "--config", SHIPPED, "--pool", work / "pool.jsonl"]  # fmt: skip
    assert cli(*argv) == 0
    assert "ner +12, pos +12" in capsys.readouterr().out
    for task in ("ner", "pos"):
        rows = read_jsonl(work / "labeled" / f"{task}.jsonl")
        assert len(rows) == 52 and [r["id"] for r in rows[40:]] == ids
        assert set(rows[0]) == {"id", "tokens", "tags"}
    remaining = [r["id"] for r in read_jsonl(work / "pool.jsonl")]
    assert len(remaining) == POOL - 12 and not set(ids) & set(remaining)
    state = json.loads((work / "labeled" / STATE_FILE).read_text())
    assert state["version"] == 1 and state["labeled"] == {"ner": 52, "pos": 52}
    (entry,) = state["rounds"]
    assert entry["round"] == 1 and entry["strategy"] == "mt-rrf" and entry["budget"] == 12
    assert entry["tasks"] == ["ner", "pos"] and entry["method"] == "ec"
    assert entry["selected"] == ids and entry["ingested"] == {"ner": ids, "pos": ids}
    assert entry["ingested_at"] and entry["batch_files"] == [str(annotated)]
    # the same batch again changes nothing (the label lists now come from the selecting run)
    before = snapshot(work / "labeled", work / "pool.jsonl")
    argv.remove("--config")
    argv.remove(SHIPPED)
    assert cli(*argv) == 0
    assert "ner +0, pos +0" in capsys.readouterr().out
    assert snapshot(work / "labeled", work / "pool.jsonl") == before
    # the labeled files are training data for the next round
    config = load_config(FinetuneConfig, SHIPPED)
    for task in config.tasks:
        task.data.train = str(work / "labeled" / f"{task.name}.jsonl")
    loaded = load_tasks(
        config, load_finetune_tokenizer(load_config(FinetuneConfig, run / "config.yaml"))
    )
    assert len(loaded["ner"].splits["train"]) == len(loaded["pos"].splits["train"]) == 52
    # a second round continues the state
    cli(*select_args(run, work, "--strategy", "mt-max", "--output", work / "b2.jsonl"))
    annotate(work / "b2.jsonl", work / "a2.jsonl", work / "oracle")
    assert cli("ingest", "--batch", work / "a2.jsonl", "--labeled", work / "labeled",
               "--tasks", "ner", "--pool", work / "pool.jsonl") == 0  # fmt: skip
    state = load_state(work / "labeled")
    assert [r["round"] for r in state["rounds"]] == [1, 2]
    assert list(state["rounds"][1]["ingested"]) == ["ner"] and state["labeled"]["ner"] == 64
    assert len(read_jsonl(work / "pool.jsonl")) == POOL - 24


def test_relabelling_an_id_differently_is_an_error(run, work):
    batch = work / "batch.jsonl"
    cli(*select_args(run, work, "--strategy", "mt-min", "--output", batch))
    annotated = annotate(batch, work / "annotated.jsonl", work / "oracle")
    argv = ["ingest", "--batch", annotated, "--labeled", work / "labeled", "--tasks", "ner,pos",
            "--config", SHIPPED]  # fmt: skip
    cli(*argv)
    lines = read_jsonl(annotated)
    lines[3]["labels"]["pos"] = ["X"] * len(lines[3]["tokens"])
    write_jsonl(annotated, lines)
    before = snapshot(work / "labeled")
    with pytest.raises(DataError, match=r"annotated.jsonl:4: id .* task 'pos': label differs"):
        cli(*argv)
    assert snapshot(work / "labeled") == before
    # the same id twice in one batch with different labels
    other = {"ner": ["B-person"] * len(lines[3]["tokens"]), "pos": lines[3]["labels"]["pos"]}
    write_jsonl(work / "twice.jsonl", [lines[3], lines[3] | {"labels": other}])
    with pytest.raises(DataError, match=r"twice.jsonl:2: id .* labelled differently at .*:1"):
        cli("ingest", "--batch", work / "twice.jsonl", "--labeled", work / "labeled",
            "--tasks", "ner", "--config", SHIPPED)  # fmt: skip


def test_every_bad_line_is_reported_and_nothing_is_ingested(run, work):
    batch = work / "batch.jsonl"
    cli(*select_args(run, work, "--strategy", "mt-par", "--output", batch))
    lines = read_jsonl(annotate(batch, work / "annotated.jsonl", work / "oracle"))
    lines[1]["labels"]["ner"][0] = "B-planet"
    lines[3]["labels"]["pos"] = lines[3]["labels"]["pos"][:-1]
    del lines[4]["labels"]["ner"]
    lines[5]["labels"]["ner"][1] = None
    del lines[6]["id"]
    text = "".join(json.dumps(x) + "\n" for x in lines).splitlines()
    text[8] = "{not json"
    annotated = work / "bad.jsonl"
    annotated.write_text("\n".join(text) + "\n")
    before = snapshot(work / "labeled", work / "pool.jsonl")
    with pytest.raises(DataError) as error:
        cli("ingest", "--batch", annotated, "--labeled", work / "labeled", "--tasks", "ner,pos",
            "--config", SHIPPED, "--pool", work / "pool.jsonl")  # fmt: skip
    message = str(error.value)
    assert message.startswith(f"6 bad line(s) in {annotated}; nothing was ingested")
    assert "bad.jsonl:2: task 'ner': tag(s) ['B-planet'] not in labels" in message
    assert "bad.jsonl:4: task 'pos': " in message and "tags" in message.split("bad.jsonl:4")[1]
    assert "bad.jsonl:5: task 'ner': no label" in message
    assert "bad.jsonl:6: task 'ner': no tag for word(s) [1]" in message
    assert "bad.jsonl:7: missing or empty 'id'" in message
    assert "bad.jsonl:9: invalid JSON" in message
    assert snapshot(work / "labeled", work / "pool.jsonl") == before
    with pytest.raises(ValueError, match=r"\['chunk'\] not in the config; its tasks are"):
        cli("ingest", "--batch", annotated, "--labeled", work / "labeled", "--tasks", "chunk",
            "--config", SHIPPED)  # fmt: skip
