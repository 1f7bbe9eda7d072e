"""Easy real fine-tuning sets, one per task type, built from the shipped WNUT-16 tweets and
Pang & Lee movie reviews: a tiny encoder trained from scratch learns them in a few epochs."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from ernie_style.testing import ROOT

__all__ = ["easy_tasks"]


def _sources(split: str) -> tuple[list[str], list[str]]:
    """Real texts: WNUT-16 tweets and Pang & Lee movie-review sentences of a shipped split."""
    data = ROOT / "data" / "finetune"
    tweets = [
        " ".join(json.loads(line)["tokens"])
        for line in (data / "wnut16" / f"{split}.jsonl").read_text().splitlines()
    ]
    with (data / "sentiment" / f"{split}.tsv").open() as handle:
        reviews = [row["text"] for row in csv.DictReader(handle, delimiter="\t")]
    clean = [t.replace("\t", " ") for t in tweets]
    return clean[: 3 * len(reviews)], reviews


def _write_tsv(path: Path, header: list[str], rows: list[tuple]) -> None:
    lines = ["\t".join(header)] + ["\t".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def easy_tasks(root: Path) -> list[dict]:
    """Easy real sets, one per task type, built from the shipped tweets and reviews (the
    source of a text is visible in its words, so a tiny encoder from scratch learns them):
    classification (tweet or review?), pair classification (which segment is the tweet?),
    regression (tweet = 1, review = 0), ranking (which of 4 candidates is a tweet, like the
    query?), token classification (spaCy silver POS tags of the classification texts)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for split in ("train", "dev", "test"):
        tweets, reviews = _sources(split)
        labelled = [(t, "tweet") for t in tweets[: len(reviews)]] + [(r, "review") for r in reviews]
        _write_tsv(root / f"domain_{split}.tsv", ["text", "label"], labelled)
        _write_tsv(
            root / f"score_{split}.tsv",
            ["text", "score"],
            [(t, 1.0 if label == "tweet" else 0.0) for t, label in labelled],
        )
        pairs = []
        for i, (tweet, review) in enumerate(zip(tweets, reviews, strict=False)):
            pairs.append((tweet, review, "first") if i % 2 else (review, tweet, "second"))
        _write_tsv(root / f"order_{split}.tsv", ["text_a", "text_b", "label"], pairs)
        with (root / f"rank_{split}.jsonl").open("w") as out:
            for i, query in enumerate(tweets[len(reviews) :]):
                candidates = rng.sample(reviews, 3)
                position = rng.randrange(4)
                candidates.insert(position, tweets[i])
                row = {"query": query, "candidates": candidates, "label": position}
                out.write(json.dumps(row) + "\n")

    def paths(name: str, suffix: str = "tsv") -> dict:
        return {s: str(root / f"{name}_{s}.{suffix}") for s in ("train", "dev", "test")}

    return [
        {
            "name": "domain",
            "type": "classification",
            "data": paths("domain"),
            "text_fields": ["text"],
            "labels": ["tweet", "review"],
        },
        {
            "name": "order",
            "type": "pair_classification",
            "data": paths("order"),
            "text_fields": ["text_a", "text_b"],
            "labels": ["first", "second"],
        },
        {
            "name": "score",
            "type": "regression",
            "data": paths("score"),
            "text_fields": ["text"],
            "label_field": "score",
        },
        {
            "name": "rank",
            "type": "ranking",
            "data": paths("rank", "jsonl"),
            "query_field": "query",
            "candidates_field": "candidates",
            "batch_size": 8,
        },
        {
            "name": "pos",
            "type": "token_classification",
            "labels": "silver:pos",
            "silver_source": "domain",
            "metrics": ["accuracy", "f1_macro"],
        },
    ]
