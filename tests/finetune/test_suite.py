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
from ernie_style.testing.finetune import make_encoder_dir, shipped_tasks

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
    monkeypatch.setattr(
        suite_module, "run_one", lambda config, log, launcher: ran.append(config) or 1.0
    )
    run_suite(suite, str(encoder), out, [0, 1], suite_path=str(suite_path))
    assert [(c["tasks"][0]["name"], c["seed"]) for c in ran] == [("doc_similarity", 1)]
    assert ran[0]["output_dir"] == str(out / "runs/doc_similarity/seed-1")
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
    ran = []
    monkeypatch.setattr(
        suite_module, "run_one", lambda config, log, launcher: ran.append(config) or 1.0
    )
    encoder = make_encoder_dir(tmp_path / "enc", vocab_size=300)
    run_suite(suite, str(encoder), tmp_path / "out", [0])
    assert [[t["name"] for t in c["tasks"]] for c in ran] == [
        ["sentiment"],
        ["wiki_pairs"],
        ["sentiment", "wiki_pairs"],
    ]
    assert ran[2]["output_dir"] == str(tmp_path / "out/runs/joint/seed-0")


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
