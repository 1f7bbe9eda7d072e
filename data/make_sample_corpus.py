"""Build the shipped sample corpus from the English Wikipedia excerpt in gensim's test data.

    python data/make_sample_corpus.py [--output data/sample_corpus/wiki_sample.jsonl]

Reads `gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2`
(installed with the `gensim` dev dependency), drops redirects and non-article pages, strips wiki
markup with gensim's `filter_wiki`, keeps only prose paragraphs (no headings, lists, tables,
captions or reference sections) and writes one JSON object per article with `id`, `title` and
`text` (paragraphs separated by a blank line).
"""

from __future__ import annotations

import argparse
import bz2
import json
import re
from collections.abc import Iterator
from pathlib import Path

DUMP_NAME = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "sample_corpus" / "wiki_sample.jsonl"

# Sections after which an article holds only references, links and lists.
_END_SECTIONS = re.compile(
    r"^=+\s*(see also|references|external links|further reading|notes|bibliography|sources|"
    r"citations|works cited|footnotes|notes and references|primary sources)\s*=+\s*$",
    re.IGNORECASE | re.MULTILINE,
)
_HEADING = re.compile(r"^=+.*=+$")
_NOT_PROSE_START = re.compile(r"^[*#:;|!{}\[\]<=_-]")
_BOLD_ITALIC = re.compile(r"'{2,}")
_EMPTY_BRACKETS = re.compile(r"\(\s*[,;]?\s*\)|\[\s*\]")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?])")
_SPACES = re.compile(r"[ \t\u00a0]{2,}")
_DEBRIS = re.compile(r"(thumb\||px\||\|\||\{\||\|\}|https?://|&[a-z]+;|<[^>]+>)")
_PROSE_END = re.compile(r"[.!?][\"'”’)]*$")


def find_dump() -> Path:
    """Path of the Wikipedia excerpt inside the installed gensim package."""
    import gensim

    path = Path(gensim.__file__).parent / "test" / "test_data" / DUMP_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; install the dev dependency gensim")
    return path


def clean_article(wikitext: str) -> str:
    """Plain prose paragraphs of one article, separated by blank lines ("" if none)."""
    from gensim.corpora.wikicorpus import filter_wiki

    text = filter_wiki(wikitext)
    end = _END_SECTIONS.search(text)
    if end:
        text = text[: end.start()]
    paragraphs = []
    for line in text.split("\n"):
        line = line.strip()
        if not line or _HEADING.match(line) or _NOT_PROSE_START.match(line):
            continue
        line = _BOLD_ITALIC.sub("", line)
        line = _EMPTY_BRACKETS.sub("", line)
        line = _SPACE_BEFORE_PUNCT.sub(r"\1", line)
        line = _SPACES.sub(" ", line).strip()
        # Prose: a few sentences' worth of words, ends like a sentence, no markup left over.
        if len(line.split()) < 12 or not _PROSE_END.search(line) or _DEBRIS.search(line):
            continue
        paragraphs.append(line)
    return "\n\n".join(paragraphs)


def iter_articles(dump: Path) -> Iterator[dict[str, str]]:
    """`{"id", "title", "text"}` for each non-redirect main-namespace article with prose."""
    from gensim.corpora.wikicorpus import extract_pages

    with bz2.open(dump) as stream:
        for title, wikitext, page_id in extract_pages(stream, filter_namespaces=("0",)):
            if wikitext.lstrip().lower().startswith("#redirect"):
                continue
            text = clean_article(wikitext)
            if text:
                yield {"id": f"enwiki-{page_id}", "title": title, "text": text}


def main() -> None:
    """Write the JSONL sample corpus and print its size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSONL file to write")
    args = parser.parse_args()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with args.output.open("w", encoding="utf-8") as out:
        for article in iter_articles(find_dump()):
            out.write(json.dumps(article, ensure_ascii=False) + "\n")
            count += 1
    size = args.output.stat().st_size
    print(f"wrote {count} articles, {size / 1e6:.2f} MB to {args.output}")


if __name__ == "__main__":
    main()
