"""Annotators turn raw text into `Document`s: sentences, words with character offsets, and (for
spaCy) phrase and entity spans.

Text conventions: a blank line ("\\n\\n") separates paragraphs, a single newline is a forced
sentence break (the BERT one-sentence-per-line convention), and sentences are further split by
the annotator.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from ernie_style.corpus.document import Document

_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n\s*")
_LINE = re.compile(r"[^\n]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])([\"')\]]*)\s+(?=[\"'(\[]?[A-Z0-9])")
#: A Chinese sentence end: a terminator run, then the closing quotes/brackets that belong to it.
_SENTENCE_END_ZH = re.compile(r"(?:[。！？!?；;…]|\.{3,})+[”’」』）)\]》〉】\"']*")
#: Han characters (CJK unified ideographs, extension A, compatibility ideographs).
_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
#: A word: one Han character (Chinese has no spaces to split at), else a run of other word
#: characters with inner hyphens/apostrophes/dots, else one symbol.
_WORD = re.compile(rf"[{_HAN}]|[^\W{_HAN}]+(?:[-'’.][^\W{_HAN}]+)*|[^\w\s]", re.UNICODE)


@dataclass(frozen=True)
class RawDocument:
    """A document before annotation."""

    id: str
    title: str
    text: str


def normalize_text(text: str) -> str:
    """Unify line endings, strip each line, and collapse runs of blank lines into one
    paragraph break.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [line.strip() for line in text.split("\n")]
    text = "\n".join(lines).strip("\n")
    return _PARAGRAPH_BREAK.sub("\n\n", text)


def line_spans(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Character spans of the non-empty lines within text[start:end]."""
    return [(start + m.start(), start + m.end()) for m in _LINE.finditer(text[start:end])]


def paragraph_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the paragraphs of normalized text."""
    spans, pos = [], 0
    for match in _PARAGRAPH_BREAK.finditer(text):
        if match.start() > pos:
            spans.append((pos, match.start()))
        pos = match.end()
    if pos < len(text):
        spans.append((pos, len(text)))
    return spans


class Annotator:
    """Base class: `annotate(docs) -> Documents`, in input order."""

    name = "base"

    def annotate(self, docs: Sequence[RawDocument]) -> list[Document]:
        """Annotate a batch of raw documents."""
        raise NotImplementedError


class RegexAnnotator(Annotator):
    """Structure only (`--annotator none`): regex sentences and words, no phrases or entities.

    Knowledge masking falls back to word-level masking on its documents. Every Han character is
    a word of its own (character-level masking on Chinese), and with `language="zh"` sentences
    end at Chinese terminators (`chinese_sentence_spans`).
    """

    name = "none"

    def __init__(self, language: str = "en") -> None:
        self.language = language

    def annotate(self, docs: Sequence[RawDocument]) -> list[Document]:
        """Sentences split after . ! ? before a capital/digit (or at Chinese terminators); words
        are Han characters, \\w runs or symbols."""
        return [self.annotate_one(doc) for doc in docs]

    def annotate_one(self, raw: RawDocument) -> Document:
        """Annotate one document."""
        text = normalize_text(raw.text)
        doc = Document(id=raw.id, title=raw.title, text=text)
        for paragraph, (p_start, p_end) in enumerate(paragraph_spans(text)):
            for l_start, l_end in line_spans(text, p_start, p_end):
                sentences = (
                    chinese_sentence_spans(text, l_start, l_end)
                    if self.language == "zh"
                    else _sentence_spans(text, l_start, l_end)
                )
                for s_start, s_end in sentences:
                    add_sentence(doc, paragraph, s_start, s_end, _word_spans(text, s_start, s_end))
        return doc


def _sentence_spans(text: str, start: int, end: int) -> Iterable[tuple[int, int]]:
    pos = start
    for match in _SENTENCE_END.finditer(text, start, end):
        yield pos, match.end(1)  # closing quotes/brackets stay with their sentence
        pos = match.end()
    if pos < end:
        yield pos, end


def chinese_sentence_spans(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    """Sentence spans of text[start:end] (one line) at Chinese terminators (。！？；… and their
    half-width forms): each ends after its terminator and the closing quotes that follow it;
    whitespace around sentences is left out."""
    pos = start
    for match in _SENTENCE_END_ZH.finditer(text, start, end):
        yield from _stripped(text, pos, match.end())
        pos = match.end()
    if pos < end:
        yield from _stripped(text, pos, end)


def _stripped(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if start < end:
        yield start, end


def _word_spans(text: str, start: int, end: int) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in _WORD.finditer(text, start, end)]


def add_sentence(
    doc: Document, paragraph: int, start: int, end: int, words: Sequence[tuple[int, int]]
) -> None:
    """Append a sentence and its words; sentences without words are dropped."""
    if not words:
        return
    index = doc.num_sentences
    doc.sentence_starts.append(words[0][0] if start > words[0][0] else start)
    doc.sentence_ends.append(max(end, words[-1][1]))
    doc.sentence_paragraph.append(paragraph)
    for w_start, w_end in words:
        doc.word_starts.append(w_start)
        doc.word_ends.append(w_end)
        doc.word_sentence.append(index)


def document_from_sentences(
    doc_id: str,
    paragraphs: Sequence[Sequence[str]],
    title: str = "",
    phrases: Sequence[tuple[int, int]] = (),
    entities: Sequence[tuple[int, int, str]] = (),
) -> Document:
    """Build a document from given paragraphs of sentences (words split by the regex
    annotator), with optional phrase and entity word spans. Handy in tests and examples.
    """
    doc = Document(id=doc_id, title=title, text="")
    parts: list[str] = []
    offset = 0
    for p, sentences in enumerate(paragraphs):
        if p:
            parts.append("\n\n")
            offset += 2
        for s, sentence in enumerate(sentences):
            if s:
                parts.append(" ")
                offset += 1
            words = [(offset + a, offset + b) for a, b in _word_spans(sentence, 0, len(sentence))]
            add_sentence(doc, p, offset, offset + len(sentence), words)
            parts.append(sentence)
            offset += len(sentence)
    doc.text = "".join(parts)
    for start, end in phrases:
        doc.phrase_starts.append(start)
        doc.phrase_ends.append(end)
    for start, end, label in entities:
        doc.entity_starts.append(start)
        doc.entity_ends.append(end)
        doc.entity_labels.append(label)
    doc.validate()
    return doc
