"""`ernie-style eval-suite`: suite files, encoders, resumable runs, summaries and comparisons."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
import yaml

from ernie_style.finetune import suite as suite_module
from ernie_style.finetune.suite import SuiteConfig, load_suite, materialise_encoder, run_suite
from ernie_style.finetune.suite_report import compare, mean_std, paired, summarise
from ernie_style.testing import ROOT
from ernie_style.testing.finetune import make_encoder_dir, run_suite_workers, shipped_tasks

SHIPPED = ROOT / "configs" / "suites" / "cpu.yaml"


def write_suite(path: Path, tasks: list[dict], **top) -> Path:
    """A suite file over `tasks` with fast fine-tuning settings."""
    data = {
        "name": "unit",
        "seeds": 2,
        "finetune": {
            "precision": "fp32",
            "epochs": 1,
            "batch_size": 16,
            "max_seq_len": 32,
            "optim": {"lr": 1e-3},
            "keep_checkpoints": 1,
        },
        "tasks": tasks,
    } | top
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def test_shipped_suite_has_four_real_tasks_with_thousands_of_examples(monkeypatch):
    monkeypatch.chdir(ROOT)  # suite data paths are relative to the repository root
    suite = load_suite(SHIPPED)
    assert len(suite.tasks) >= 4
    for task in suite.tasks:
        sizes = {}
        texts = {}
        for split, file in task["data"].items():
            rows = read_rows(Path(file))
            sizes[split] = len(rows)
            texts[split] = {row_text(row, task) for row in rows}
        assert sizes["train"] >= 1500, (task["name"], sizes)
        assert sizes["test"] >= 500, (task["name"], sizes)
        # Fixed splits without leaks: no text is in two splits.
        assert not texts["train"] & texts["test"], task["name"]
        assert not texts["train"] & texts["dev"], task["name"]
        if task["type"] == "classification":
            seen = {row[task["label_field"]] for row in read_rows(Path(task["data"]["train"]))}
            assert seen == set(task["labels"]), task["name"]


def read_rows(path: Path) -> list[dict]:
    """Rows of a TSV (header) or JSONL file."""
    with path.open(encoding="utf-8", newline="") as handle:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in handle]
        return list(csv.DictReader(handle, delimiter="\t"))


def row_text(row: dict, task: dict) -> str:
    """The text of a row (the words joined, for token tasks)."""
    value = row[task["text_fields"][0]]
    return " ".join(value) if isinstance(value, list) else value


def test_suite_errors_name_the_key(tmp_path):
    tasks = shipped_tasks("sentiment")
    bad_key = write_suite(tmp_path / "a.yaml", tasks)
    data = yaml.safe_load(bad_key.read_text())
    data["finetune"]["optim"]["lrr"] = 1
    bad_key.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=r"a\.yaml: tasks\[0\] \(sentiment\):.*optim\.lrr"):
        load_suite(bad_key)
    per_run = write_suite(tmp_path / "b.yaml", tasks)
    data = yaml.safe_load(per_run.read_text())
    data["finetune"]["seed"] = 3
    per_run.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=r"finetune\.seed: set per run"):
        load_suite(per_run)
    missing = shipped_tasks("sentiment")
    missing[0]["data"]["dev"] = str(tmp_path / "nope.tsv")
    with pytest.raises(ValueError, match=r"tasks\[0\]\.data\.dev: .*nope\.tsv does not exist"):
        load_suite(write_suite(tmp_path / "c.yaml", missing))
    joint = shipped_tasks("sentiment")
    joint[0]["name"] = "joint"
    with pytest.raises(ValueError, match="reserved"):
        load_suite(write_suite(tmp_path / "d.yaml", joint))


def test_random_encoders_are_seeded_and_keep_the_architecture(tmp_path):
    import torch
    from transformers import ErnieModel

    source = make_encoder_dir(tmp_path / "enc", vocab_size=300, seed=7)
    first = materialise_encoder(f"random:{source}", tmp_path / "out", seed=0)
    again = materialise_encoder(f"random:{source}", tmp_path / "out2", seed=0)
    other = materialise_encoder(f"random:{source}", tmp_path / "out", seed=1)
    weights = [
        ErnieModel.from_pretrained(str(p)).state_dict() for p in (source, first, again, other)
    ]
    assert json.loads((first / "config.json").read_text())["hidden_size"] == 64
    key = "embeddings.word_embeddings.weight"
    assert torch.equal(weights[1][key], weights[2][key])  # same seed: same initialisation
    assert not torch.equal(weights[1][key], weights[3][key])  # another seed: another one
    assert not torch.equal(weights[0][key], weights[1][key])  # not the source's weights
    assert (first / "tokenizer.json").is_file()
    preset = materialise_encoder("preset:micro", tmp_path / "out", seed=0, tokenizer=str(source))
    assert json.loads((preset / "config.json").read_text())["hidden_size"] == 32
    with pytest.raises(ValueError, match="needs --tokenizer"):
        materialise_encoder("preset:micro", tmp_path / "out3", seed=0)
    with pytest.raises(ValueError, match="not an encoder directory"):
        materialise_encoder(str(tmp_path / "missing"), tmp_path / "out", seed=0)


def test_run_suite_end_to_end_resumes_and_summarises(tmp_path, monkeypatch):
    encoder = make_encoder_dir(tmp_path / "enc", vocab_size=600)
    suite_path = write_suite(tmp_path / "s.yaml", shipped_tasks("sentiment", "doc_similarity"))
    suite = load_suite(suite_path)
    out = tmp_path / "out"
    run_suite(suite, str(encoder), out, [0, 1], suite_path=str(suite_path))
    result = summarise(out, suite, [0, 1], str(encoder))
    for task, metric in (("sentiment", "accuracy"), ("doc_similarity", "pearson")):
        row = result["summary"][task]
        per_seed = []
        for seed in (0, 1):
            metrics = json.loads((out / f"runs/{task}/seed-{seed}/metrics.json").read_text())
            per_seed.append(metrics[task]["test"][metric])
        assert row["metric"] == metric
        assert row["test"]["n"] == 2
        assert row["test"]["mean"] == pytest.approx(statistics.fmean(per_seed))
        assert row["test"]["std"] == pytest.approx(statistics.stdev(per_seed))
    assert result["runs"]["sentiment"]["0"]["classes"] in (1, 2)
    assert (out / "results.png").stat().st_size > 0
    assert "| sentiment | accuracy |" in (out / "results.md").read_text()

    # Rerun: finished runs are reused; only a run without metrics.json runs again.
    (out / "runs/doc_similarity/seed-1/metrics.json").unlink()
    ran = []
    monkeypatch.setattr(suite_module, "run_one", fake_run_one(ran))
    run_suite(suite, str(encoder), out, [0, 1], suite_path=str(suite_path))
    assert [(task, seed) for _, task, seed in ran] == [("doc_similarity", 1)]
    assert (out / "runs/doc_similarity/seed-1/metrics.json").is_file()
    # Another encoder in the same output folder is refused (results would mix).
    with pytest.raises(ValueError, match="another encoder"):
        run_suite(suite, str(tmp_path / "other"), out, [0], suite_path=str(suite_path))


def test_joint_run_trains_all_tasks_at_once(tmp_path, monkeypatch):
    suite = SuiteConfig(
        name="j",
        joint=True,
        finetune={"epochs": 1},
        tasks=shipped_tasks("sentiment", "wiki_pairs"),
    )
    suite.validate()
    configs = []
    monkeypatch.setattr(suite_module, "run_one", fake_run_one([], configs=configs))
    encoder = make_encoder_dir(tmp_path / "enc", vocab_size=300)
    run_suite(suite, str(encoder), tmp_path / "out", [0])
    assert [[t["name"] for t in c["tasks"]] for c in configs] == [
        ["sentiment"],
        ["wiki_pairs"],
        ["sentiment", "wiki_pairs"],
    ]
    assert configs[2]["output_dir"] == str(tmp_path / "out/runs/joint/seed-0")


def test_paired_differences_and_comparison_tables(tmp_path):
    assert mean_std([1.0, 3.0]) == {"mean": 2.0, "std": statistics.stdev([1.0, 3.0]), "n": 2}
    diff = paired({"0": 0.5, "1": 0.6, "2": 0.7}, {"0": 0.6, "1": 0.8, "2": 0.75})
    assert diff["diffs"] == pytest.approx({"0": 0.1, "1": 0.2, "2": 0.05})
    assert diff["mean"] == pytest.approx(0.35 / 3)
    from scipy import stats

    expected = stats.ttest_rel([0.6, 0.8, 0.75], [0.5, 0.6, 0.7]).pvalue
    assert diff["p_value"] == pytest.approx(expected)
    folders = []
    for name, values in (("base", [0.5, 0.6]), ("better", [0.7, 0.7])):
        folder = tmp_path / name
        folder.mkdir()
        runs = {"t": {str(s): {"test": {"accuracy": v}} for s, v in enumerate(values)}}
        result = {
            "summary": {"t": {"metric": "accuracy", "test": mean_std(values)}},
            "runs": runs,
            "average": {"per_seed": {str(s): v for s, v in enumerate(values)}},
        }
        (folder / "results.json").write_text(json.dumps(result))
        folders.append(folder)
    table = compare(folders, ["base", "better"], tmp_path / "cmp")["table"]
    assert table["better"]["t"]["paired_vs_baseline"]["mean"] == pytest.approx(0.15)
    assert table["better"]["average"]["mean"] == pytest.approx(0.7)
    text = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| t | 55.0 ± 7.1 (2) | 70.0 ± 0.0 (2) |" in text
    assert "+15.0 ± 7.1 (n=2" in text
    assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 0


def test_an_interrupted_run_resumes_from_its_checkpoint(tmp_path):
    run = tmp_path / "runs" / "t" / "seed-0"
    config = tmp_path / "runs" / "t" / "seed-0.yaml"
    assert "--resume" not in suite_module.finetune_command(config, run)
    (run / "checkpoints").mkdir(parents=True)
    assert suite_module.finetune_command(config, run)[-2:] == ["--resume", "auto"]
    launched = suite_module.finetune_command(config, run, "accelerate launch --num_processes 2")
    assert launched[:6] == ["accelerate", "launch", "--num_processes", "2", "-m", "ernie_style"]


def test_task_overrides_apply_to_that_task_alone(tmp_path):
    suite = SuiteConfig(
        joint=True,
        finetune={"epochs": 3, "optim": {"lr": 1e-3, "warmup_ratio": 0.1}},
        tasks=shipped_tasks("sentiment", "wiki_pairs"),
        task_overrides={"wiki_pairs": {"epochs": 10, "optim": {"lr": 5e-4}}},
    )
    suite.validate()
    pairs = suite.run_config([suite.tasks[1]], "enc", 0, "out")
    assert pairs["epochs"] == 10
    assert pairs["optim"] == {"lr": 5e-4, "warmup_ratio": 0.1}  # merged, not replaced
    assert suite.run_config([suite.tasks[0]], "enc", 0, "out")["epochs"] == 3
    assert suite.run_config(suite.tasks, "enc", 0, "out")["epochs"] == 3  # the joint run
    with pytest.raises(ValueError, match=r"task_overrides\.nope: no such task"):
        SuiteConfig(tasks=suite.tasks, task_overrides={"nope": {"epochs": 1}}).validate()
    with pytest.raises(ValueError, match=r"task_overrides\.sentiment\.seed: set per run"):
        SuiteConfig(tasks=suite.tasks, task_overrides={"sentiment": {"seed": 1}}).validate()
    with pytest.raises(ValueError, match=r"tasks\[1\] \(wiki_pairs\):.*epochs"):
        SuiteConfig(tasks=suite.tasks, task_overrides={"wiki_pairs": {"epochs": 0}}).validate()


def fake_run_one(ran: list, delay: float = 0.0, on_run=None, configs: list | None = None):
    """A stand-in for `run_one` that records (worker thread, task, seed) (and the configs) and
    writes the test metrics a finished run leaves, after `delay` seconds (so concurrent workers
    overlap); `on_run(count)` is called as each run starts."""
    import threading
    import time

    def run_one(config, log, launcher):
        name = "joint" if len(config["tasks"]) > 1 else config["tasks"][0]["name"]
        ran.append((threading.current_thread().name, name, config["seed"]))
        if configs is not None:
            configs.append(config)
        if on_run is not None:
            on_run(len(ran))
        time.sleep(delay)
        run = Path(config["output_dir"])
        run.mkdir(parents=True, exist_ok=True)
        scores = {"test": {"accuracy": 0.5 + config["seed"] / 10}, "dev": {"accuracy": 0.5}}
        metrics = {task["name"]: scores for task in config["tasks"]}
        (run / "metrics.json").write_text(json.dumps(metrics))
        return 1.0

    return run_one


def test_two_workers_on_one_output_share_the_runs_each_run_once(tmp_path, monkeypatch):
    suite = SuiteConfig(name="w", finetune={"epochs": 1}, tasks=shipped_tasks("sentiment"))
    suite.validate()
    ran: list = []
    monkeypatch.setattr(suite_module, "run_one", fake_run_one(ran, delay=0.3))
    encoder = make_encoder_dir(tmp_path / "enc", vocab_size=300)
    seeds = [0, 1, 2, 3, 4, 5]
    results = run_suite_workers(2, suite, str(encoder), tmp_path / "out", seeds)
    assert sorted(seed for _, _, seed in ran) == seeds  # every run once, none twice
    assert {worker for worker, _, _ in ran} == {"w0", "w1"}  # both took a share
    finished = [[seed for _, seed, _ in done] for done in results.values()]
    assert max(finished, key=len) == seeds  # the last worker to stop saw every run finished
    assert suite_module.unfinished_runs(tmp_path / "out", suite, seeds) == []


def test_a_held_run_is_skipped_and_taken_once_its_worker_is_gone(tmp_path, monkeypatch):
    suite = SuiteConfig(name="w", finetune={"epochs": 1}, tasks=shipped_tasks("sentiment"))
    suite.validate()
    encoder = make_encoder_dir(tmp_path / "enc", vocab_size=300)
    out = tmp_path / "out"
    ran: list = []
    monkeypatch.setattr(suite_module, "run_one", fake_run_one(ran))
    other = suite_module.claim_run(suite_module.run_dir(out, "sentiment", 1))
    try:
        done = run_suite(suite, str(encoder), out, [0, 1, 2])
        assert [seed for _, _, seed in ran] == [0, 2]
        assert [seed for _, seed, _ in done] == [0, 2]
        pending = suite_module.unfinished_runs(out, suite, [0, 1, 2])
        assert len(pending) == 1 and pending[0].startswith("sentiment seed 1 (running: ")
        assert f"pid {__import__('os').getpid()}" in pending[0]  # names the holder
    finally:
        other.release()
    # The other worker dies while this one runs seed 2 (seed 1 skipped): a second pass takes it.
    ran.clear()
    out2 = tmp_path / "out2"
    other = suite_module.claim_run(suite_module.run_dir(out2, "sentiment", 1))
    on_run = lambda count: other.release() if count == 2 else None  # noqa: E731
    monkeypatch.setattr(suite_module, "run_one", fake_run_one(ran, on_run=on_run))
    done = run_suite(suite, str(encoder), out2, [0, 1, 2])
    assert [seed for _, _, seed in ran] == [0, 2, 1]
    assert [seed for _, seed, _ in done] == [0, 1, 2]
    # Another worker finishes seed 1 between our look and our claim: it is not run again.
    ran.clear()
    out3 = tmp_path / "out3"
    claim_run = suite_module.claim_run

    def finished_by_another_worker_meanwhile(run: Path):
        if run.name == "seed-1":
            fake_run_one([])({"output_dir": str(run), "tasks": suite.tasks, "seed": 1}, None, "")
        return claim_run(run)

    monkeypatch.setattr(suite_module, "claim_run", finished_by_another_worker_meanwhile)
    done = run_suite(suite, str(encoder), out3, [0, 1, 2])
    assert [seed for _, _, seed in ran] == [0, 2]
    assert [seed for _, seed, _ in done] == [0, 1, 2]


def test_cli_summarises_only_when_no_run_is_left(tmp_path, monkeypatch, capsys):
    from ernie_style.cli import main

    suite_path = write_suite(tmp_path / "s.yaml", shipped_tasks("sentiment"), seeds=2)
    encoder = make_encoder_dir(tmp_path / "enc", vocab_size=300)
    out = tmp_path / "out"
    monkeypatch.setattr(suite_module, "run_one", fake_run_one([]))
    argv = ["eval-suite", "--encoder", str(encoder), "--suite", str(suite_path)]
    argv += ["--output", str(out)]
    other = suite_module.claim_run(suite_module.run_dir(out, "sentiment", 1))
    try:
        assert main(argv) == 0
    finally:
        other.release()
    assert "1 run(s) not finished: sentiment seed 1 (running: " in capsys.readouterr().out
    assert not (out / "results.json").exists()
    assert main(argv) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["summary"]["sentiment"]["test"]["n"] == 2
    assert result["summary"]["sentiment"]["test"]["mean"] == pytest.approx(0.55)
