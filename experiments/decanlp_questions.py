"""Tasks as questions vs per-task heads, and zero-shot questions (issue 16, decaNLP).

    .venv/bin/python experiments/decanlp_questions.py [--encoder DIR] [--seeds 3] [--epochs 2]

On one encoder (default: all-MiniLM-L6-v2, unpacked by experiments/minilm_continued.py), for
each seed, fine-tunes jointly on Rotten Tomatoes polarity and TREC question type from the CPU
suite (data/suites/cpu/):

- `heads`: one classification head per task (MT-DNN);
- `questions`: both phrased as questions ("Is this review positive or negative?", "Is this
  question about an abbreviation, a description, ...?") for the one shared pointer head;

then scores the questions model zero-shot on (a) the Rotten Tomatoes test set asked with other
label words ("good or bad"), (b) the tweet sentiment test set (negative / neutral / positive),
a task it never trained on, phrased as a question. Writes results.json / results.md (mean +-
std over seeds, the questions-minus-heads margin, zero-shot accuracy against the majority
class with a one-sided binomial test). Every run is reused when finished.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "data" / "suites" / "cpu"
RT_WORDS = {"neg": "negative", "pos": "positive"}
TREC_WORDS = {
    "ABBR": "an abbreviation",
    "DESC": "a description",
    "ENTY": "an entity",
    "HUM": "a person",
    "LOC": "a location",
    "NUM": "a number",
}


def task(name: str, labels: list[str], question: str | None, words: dict | None) -> dict:
    """A suite task section, phrased as a question when `question` is given."""
    section: dict[str, Any] = {
        "name": name,
        "type": "classification",
        "data": {s: str(SUITE / name / f"{s}.tsv") for s in ("train", "dev", "test")},
        "text_fields": ["text"],
        "labels": labels,
        "metrics": ["accuracy", "f1_macro"],
    }
    if question:
        section |= {"question": question, "label_words": words}
    return section


def tasks(questions: bool) -> list[dict]:
    """The two training tasks, as heads or as questions."""
    return [
        task("rt_sentiment", ["neg", "pos"], "Is this review {labels}?" if questions else None,
             RT_WORDS if questions else None),
        task("trec", list(TREC_WORDS), "Is this question about {labels}?" if questions else None,
             TREC_WORDS if questions else None),
    ]  # fmt: skip


def finetune(encoder: Path, out: Path, seed: int, epochs: int, questions: bool) -> Path:
    """One joint fine-tuning run (reused when its metrics exist)."""
    from ernie_style.config import load_config
    from ernie_style.finetune.config import FinetuneConfig
    from ernie_style.finetune.trainer import FinetuneTrainer

    run = out / ("questions" if questions else "heads") / f"seed-{seed}"
    if (run / "metrics.json").is_file():
        return run
    config = {
        "output_dir": str(run),
        "seed": seed,
        "encoder": str(encoder),
        "max_seq_len": 64,
        "precision": "auto",
        "epochs": epochs,
        "batch_size": 32,
        "optim": {"lr": 5e-5, "warmup_ratio": 0.1},
        "sampling": "proportional",
        "keep_checkpoints": 1,
        "log_every": 20,
        "tasks": tasks(questions),
    }
    run.mkdir(parents=True, exist_ok=True)
    path = run.parent / f"seed-{seed}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    FinetuneTrainer(load_config(FinetuneConfig, path), resume="auto").train()
    return run


def zero_shot(run: Path, section: dict) -> tuple[float, list[int]]:
    """Test accuracy of a questions run on a task phrased as `section` (never trained so)."""
    import torch

    from ernie_style.config import load_config
    from ernie_style.finetune.config import FinetuneConfig
    from ernie_style.finetune.data import load_tasks
    from ernie_style.finetune.evaluation import predict_split
    from ernie_style.finetune.loading import load_finetuned

    model, tokenizer, config, _ = load_finetuned(run)
    probe = run.parent / f"probe-{section['name']}.yaml"
    data = {"encoder": config.encoder, "max_seq_len": 64, "tasks": [section]}
    probe.write_text(yaml.safe_dump(data, sort_keys=False))
    encoded = load_tasks(load_config(FinetuneConfig, probe), tokenizer)[section["name"]]
    model.add_question_task(section["name"])  # the shared pointer answers it

    @torch.no_grad()
    def score(batch: dict) -> torch.Tensor:
        batch = {k: v for k, v in batch.items() if k != "labels"}
        return model(batch | {"task": section["name"]}).logits

    predictions = predict_split(encoded, "test", score, 64)
    accuracy = predictions.metrics(["accuracy"])["accuracy"]
    return accuracy, list(predictions.raw_references)


def summary(values: list[float]) -> str:
    """The mean +- sample std (n) of fractions, as percentages."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} +- {100 * spread:.1f} (n={len(values)})"


def main() -> None:
    """Fine-tune heads and questions per seed, probe zero-shot, write the tables."""
    from scipy.stats import binomtest

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--encoder", type=Path, default=ROOT / "runs/experiments/minilm/all-MiniLM-L6-v2"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs/experiments/decanlp")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    rows: dict[str, list[float]] = {}
    p_values: list[float] = []
    for seed in range(args.seeds):
        for questions in (False, True):
            run = finetune(args.encoder, args.out, seed, args.epochs, questions)
            metrics = json.loads((run / "metrics.json").read_text())
            kind = "questions" if questions else "heads"
            for name in ("rt_sentiment", "trec"):
                rows.setdefault(f"{kind}/{name}", []).append(metrics[name]["test"]["accuracy"])
        run = args.out / "questions" / f"seed-{seed}"
        rephrased = task("rt_sentiment", ["neg", "pos"], "Is this review {labels}?",
                         {"neg": "bad", "pos": "good"})  # fmt: skip
        accuracy, _ = zero_shot(run, rephrased)
        rows.setdefault("zero-shot/rt_sentiment good-bad", []).append(accuracy)
        held_out = task("tweet_sentiment", ["negative", "neutral", "positive"],
                        "Is this tweet {labels}?", None)  # fmt: skip
        accuracy, references = zero_shot(run, held_out)
        rows.setdefault("zero-shot/tweet_sentiment", []).append(accuracy)
        majority = max(references.count(c) for c in set(references)) / len(references)
        rows.setdefault("chance/tweet_sentiment majority", []).append(majority)
        hits = round(accuracy * len(references))
        # Against always answering the majority class, not 1/3: a constant answer beats 1/3.
        test = binomtest(hits, len(references), majority, alternative="greater")
        p_values.append(test.pvalue)
    lines = ["| run | test accuracy x100 |", "|---|---|"]
    lines += [f"| {name} | {summary(values)} |" for name, values in rows.items()]
    shown = ", ".join(f"{p:.3g}" for p in p_values)
    lines.append(f"| binomial p, tweet_sentiment zero-shot > majority, per seed | {shown} |")
    for name in ("rt_sentiment", "trec"):
        pairs = zip(rows[f"questions/{name}"], rows[f"heads/{name}"], strict=True)
        margin = [q - h for q, h in pairs]
        lines.append(f"| margin questions - heads / {name} | {summary(margin)} |")
    results = rows | {"p_tweet_sentiment_vs_majority": p_values}
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
