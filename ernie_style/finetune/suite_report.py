"""Summaries of evaluation-suite runs: per-encoder tables and paired comparisons.

`summarise` reads every (task, seed) run an `ernie-style eval-suite` left in OUT and writes
`results.json`, `results.md` (test metric of the best dev checkpoint, mean ± std over seeds, n)
and `results.png`. A classification run whose test predictions are all one class is flagged as
collapsed. `compare` puts several OUT folders side by side: mean ± std per encoder and the paired
difference to the first (baseline) encoder by seed, with a paired t-test.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ernie_style.fileio import atomic_write, save_figure
from ernie_style.finetune.suite import JOINT, SuiteConfig, run_dir


def main_metric(task: dict[str, Any]) -> str:
    """The metric a task's model is selected and reported by (defaults resolved)."""
    from ernie_style.config import from_dict
    from ernie_style.finetune.config import FinetuneConfig

    return from_dict(FinetuneConfig, {"encoder": "unused", "tasks": [task]}).tasks[0].main_metric


def prediction_classes(run: Path, task: str) -> int | None:
    """How many distinct labels the run predicted on test (None: not a label task)."""
    path = run / "predictions" / f"{task}.jsonl"
    if not path.is_file():
        return None
    seen: set[str] = set()
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            prediction = json.loads(line)["prediction"]
            if isinstance(prediction, str):
                seen.add(prediction)
            elif isinstance(prediction, list) and all(isinstance(p, str) for p in prediction):
                seen.update(p for p in prediction if p != "O")
            else:
                return None
    return len(seen)


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value) and n."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def collect(out: Path, suite: SuiteConfig, seeds: Sequence[int]) -> dict[str, Any]:
    """Per task (and `joint/TASK`), per seed: test metrics, predicted classes, seconds."""
    runs: dict[str, dict[str, Any]] = {}
    names = suite.task_names() + ([JOINT] if suite.joint else [])
    for name in names:
        for seed in seeds:
            run = run_dir(out, name, seed)
            metrics_path = run / "metrics.json"
            if not metrics_path.is_file():
                continue
            metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
            timing = run / "suite_timing.json"
            seconds = json.loads(timing.read_text())["seconds"] if timing.is_file() else None
            for task in suite.task_names() if name == JOINT else [name]:
                key = f"{JOINT}/{task}" if name == JOINT else task
                runs.setdefault(key, {})[str(seed)] = {
                    "test": metrics[task]["test"],
                    "dev": metrics[task]["dev"],
                    "classes": prediction_classes(run, task),
                    "seconds": seconds,
                }
    return runs


def summarise(out: Path, suite: SuiteConfig, seeds: Sequence[int], encoder: str) -> dict[str, Any]:
    """Write results.json / results.md / results.png for one encoder's suite runs."""
    runs = collect(out, suite, seeds)
    main = {task["name"]: main_metric(task) for task in suite.tasks}
    table: dict[str, Any] = {}
    for key, by_seed in runs.items():
        task = key.split("/")[-1]
        values = [entry["test"][main[task]] for entry in by_seed.values()]
        collapsed = [s for s, e in by_seed.items() if e["classes"] == 1]
        table[key] = {"metric": main[task], "test": mean_std(values), "collapsed_seeds": collapsed}
    average = suite_average(runs, main, suite.task_names())
    result = {
        "encoder": encoder,
        "suite": suite.name,
        "seeds": list(seeds),
        "main_metric": main,
        "summary": table,
        "average": average,
        "runs": runs,
    }
    atomic_write(out / "results.json", json.dumps(result, indent=1) + "\n")
    atomic_write(out / "results.md", markdown_table(result))
    plot_single(result, out / "results.png")
    return result


def suite_average(
    runs: dict[str, Any], main: dict[str, str], tasks: Sequence[str]
) -> dict[str, Any] | None:
    """Mean of the tasks' main test metrics per seed (seeds with every task), then mean ± std."""
    seeds = set.intersection(*(set(runs.get(t, {})) for t in tasks)) if tasks else set()
    if not seeds:
        return None
    per_seed = {s: statistics.fmean(runs[t][s]["test"][main[t]] for t in tasks) for s in seeds}
    return {"per_seed": dict(sorted(per_seed.items())), **mean_std(list(per_seed.values()))}


def fmt(stats: dict[str, float]) -> str:
    """`mean ± std` in points (x100)."""
    return f"{100 * stats['mean']:.1f} ± {100 * stats['std']:.1f}"


def markdown_table(result: dict[str, Any]) -> str:
    """The per-task table of one encoder."""
    lines = [
        f"# Suite `{result['suite']}`: `{result['encoder']}`",
        "",
        "Test metric (x100) of the best dev checkpoint; mean ± sample std over seeds.",
        "",
        "| task | metric | test | n | collapsed seeds |",
        "|---|---|---|---|---|",
    ]
    for key, row in result["summary"].items():
        collapsed = ", ".join(row["collapsed_seeds"]) or "-"
        stats = row["test"]
        lines.append(f"| {key} | {row['metric']} | {fmt(stats)} | {stats['n']} | {collapsed} |")
    if result["average"]:
        avg = result["average"]
        lines.append(f"| **average** | main metrics | {fmt(avg)} | {avg['n']} | |")
    return "\n".join(lines) + "\n"


def plot_single(result: dict[str, Any], path: Path) -> None:
    """Bar chart of each task's main test metric with its std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(result["summary"])
    means = [100 * result["summary"][k]["test"]["mean"] for k in keys]
    stds = [100 * result["summary"][k]["test"]["std"] for k in keys]
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(keys)), 3.5))
    ax.bar(range(len(keys)), means, yerr=stds, capsize=4, color="#4c72b0")
    ax.set_xticks(range(len(keys)), keys, rotation=30, ha="right")
    ax.set_ylabel("test main metric (x100)")
    ax.set_title(f"{result['suite']}: {Path(result['encoder']).name}")
    fig.tight_layout()
    save_figure(fig, path)


def paired(baseline: dict[str, float], other: dict[str, float]) -> dict[str, Any] | None:
    """Paired difference other - baseline over the seeds both have, with a paired t-test."""
    seeds = sorted(set(baseline) & set(other), key=int)
    if not seeds:
        return None
    diffs = [other[s] - baseline[s] for s in seeds]
    stats = mean_std(diffs)
    p_value = None
    if len(diffs) > 1 and stats["std"] > 0:
        from scipy import stats as scipy_stats

        p_value = float(
            scipy_stats.ttest_rel([other[s] for s in seeds], [baseline[s] for s in seeds]).pvalue
        )
    elif len(diffs) > 1:
        p_value = 0.0 if stats["mean"] != 0 else 1.0
    return {"diffs": dict(zip(seeds, diffs, strict=True)), **stats, "p_value": p_value}


def compare(folders: Sequence[Path], labels: Sequence[str], out: Path) -> dict[str, Any]:
    """Side-by-side table (mean ± std) and paired differences to the first folder."""
    results = [json.loads((f / "results.json").read_text(encoding="utf-8")) for f in folders]
    keys = [k for k in results[0]["summary"] if all(k in r["summary"] for r in results)]
    scores = []
    for result in results:
        by_key = {}
        for key in keys:
            metric = result["summary"][key]["metric"]
            by_key[key] = {s: e["test"][metric] for s, e in result["runs"][key].items()}
        if result["average"]:
            by_key["average"] = result["average"]["per_seed"]
        scores.append(by_key)
    rows = keys + (["average"] if all("average" in s for s in scores) else [])
    table = {
        label: {
            key: mean_std(list(s[key].values()))
            | {"paired_vs_baseline": paired(scores[0][key], s[key])}
            for key in rows
        }
        for label, s in zip(labels, scores, strict=True)
    }
    comparison = {"labels": list(labels), "folders": [str(f) for f in folders], "table": table}
    atomic_write(out / "comparison.json", json.dumps(comparison, indent=1) + "\n")
    atomic_write(out / "comparison.md", comparison_markdown(comparison, rows))
    plot_comparison(comparison, rows, out / "comparison.png")
    return comparison


def comparison_markdown(comparison: dict[str, Any], rows: Sequence[str]) -> str:
    """Two tables: mean ± std (n) per encoder; paired differences to the baseline."""
    labels = comparison["labels"]
    table = comparison["table"]
    lines = ["Test main metric (x100), mean ± std over seeds (n).", ""]
    lines += ["| task | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for key in rows:
        cells = [f"{fmt(table[label][key])} ({table[label][key]['n']})" for label in labels]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Paired difference to `{labels[0]}` by seed (x100): mean ± std, paired t-test p.",
        "",
    ]
    lines += ["| task | " + " | ".join(labels[1:]) + " |", "|---" * len(labels) + "|"]
    for key in rows:
        cells = []
        for label in labels[1:]:
            diff = table[label][key]["paired_vs_baseline"]
            if diff is None:
                cells.append("-")
                continue
            p = (
                "n/a"
                if diff["p_value"] is None or math.isnan(diff["p_value"])
                else f"{diff['p_value']:.3f}"
            )
            cells.append(
                f"{100 * diff['mean']:+.1f} ± {100 * diff['std']:.1f} (n={diff['n']}, p={p})"
            )
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_comparison(comparison: dict[str, Any], rows: Sequence[str], path: Path) -> None:
    """Grouped bars: one group per task, one bar per encoder, std over seeds as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = comparison["labels"]
    width = 0.8 / len(labels)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(rows)), 3.8))
    for i, label in enumerate(labels):
        stats = [comparison["table"][label][key] for key in rows]
        xs = [j + (i - (len(labels) - 1) / 2) * width for j in range(len(rows))]
        ax.bar(
            xs,
            [100 * s["mean"] for s in stats],
            width,
            yerr=[100 * s["std"] for s in stats],
            capsize=3,
            label=label,
        )
    ax.set_xticks(range(len(rows)), rows, rotation=30, ha="right")
    ax.set_ylabel("test main metric (x100)")
    ax.legend(fontsize=8, ncol=min(len(labels), 3), loc="lower center", bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout()
    save_figure(fig, path)
