"""The default annotator: spaCy tokens, parser sentences, noun chunks and named entities.

Every line of the normalized text (a forced sentence break) is parsed as its own spaCy doc, so
no sentence crosses a line or paragraph boundary; lines longer than `MAX_PIECE_CHARS` are parsed
in pieces cut at sentence ends or whitespace, so spaCy's `max_length` is never reached and its
memory stays bounded. spaCy itself is imported when an annotator is built, not on import.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ernie_style.corpus.annotate import (
    Annotator,
    RawDocument,
    line_spans,
    normalize_text,
    paragraph_spans,
)
from ernie_style.corpus.document import Document
from ernie_style.defaults import DEFAULT_SPACY_BATCH_SIZE, DEFAULT_SPACY_MODEL

if TYPE_CHECKING:
    from spacy.language import Language
    from spacy.tokens import Doc

DEFAULT_MODEL = DEFAULT_SPACY_MODEL
#: Pipeline components the annotator does not use; excluding them saves time.
EXCLUDED_COMPONENTS = ("lemmatizer",)
#: Longest text handed to spaCy at once (its parser needs memory per character).
MAX_PIECE_CHARS = 10_000
DEFAULT_BATCH_SIZE = DEFAULT_SPACY_BATCH_SIZE

_SENTENCE_CUT = re.compile(r"[.!?][\"')\]]*\s+")
_WHITESPACE = re.compile(r"\s+")


def load_pipeline(model: str = DEFAULT_MODEL) -> Language:
    """Load a spaCy pipeline without the components annotation does not need."""
    import spacy

    try:
        return spacy.load(model, exclude=list(EXCLUDED_COMPONENTS))
    except OSError as error:
        raise ValueError(f"cannot load spaCy model {model!r}: {error}") from error


def piece_spans(text: str, start: int, end: int, max_chars: int) -> Iterator[tuple[int, int]]:
    """Cut text[start:end] into consecutive spans of at most `max_chars` characters, preferably
    after a sentence end, else at whitespace, else anywhere. The spans cover the whole range.
    """
    while end - start > max_chars:
        low, high = start + max_chars // 2, start + max_chars
        cut = _last_match_end(_SENTENCE_CUT, text, low, high)
        if cut is None:
            cut = _last_match_end(_WHITESPACE, text, low, high) or high
        yield start, cut
        start = cut
    yield start, end


def _last_match_end(pattern: re.Pattern[str], text: str, low: int, high: int) -> int | None:
    cut = None
    for match in pattern.finditer(text, low, high):
        cut = match.end()
    return cut


class SpacyAnnotator(Annotator):
    """Annotate with a spaCy pipeline (tagger, parser, attribute ruler and NER are needed).

    Words are spaCy tokens minus whitespace tokens; phrases are noun chunks and entities are
    `doc.ents`, as word spans clipped to one sentence (spans left empty are dropped).
    """

    name = "spacy"

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_piece_chars: int = MAX_PIECE_CHARS,
        nlp: Language | None = None,
    ) -> None:
        if batch_size < 1 or max_piece_chars < 2:
            raise ValueError("batch_size must be >= 1 and max_piece_chars >= 2")
        self.model = model
        self.nlp = nlp if nlp is not None else load_pipeline(model)
        self.batch_size = batch_size
        self.max_piece_chars = min(max_piece_chars, self.nlp.max_length)
        self._has_chunks = "parser" in self.nlp.pipe_names

    def annotate(self, docs: Sequence[RawDocument]) -> list[Document]:
        """Annotate a batch; all lines of all documents go through one `nlp.pipe` stream."""
        texts = [normalize_text(raw.text) for raw in docs]
        out = [Document(id=r.id, title=r.title, text=t) for r, t in zip(docs, texts, strict=True)]
        pieces: list[tuple[int, int, int, int]] = []  # document, paragraph, start, end
        for i, text in enumerate(texts):
            for paragraph, (p_start, p_end) in enumerate(paragraph_spans(text)):
                for l_start, l_end in line_spans(text, p_start, p_end):
                    for start, end in piece_spans(text, l_start, l_end, self.max_piece_chars):
                        pieces.append((i, paragraph, start, end))
        stream = self.nlp.pipe(
            (texts[i][start:end] for i, _, start, end in pieces), batch_size=self.batch_size
        )
        for (i, paragraph, start, _), parsed in zip(pieces, stream, strict=True):
            self._add_piece(out[i], paragraph, start, parsed)
        return out

    def _add_piece(self, doc: Document, paragraph: int, offset: int, parsed: Doc) -> None:
        """Append the sentences, words, chunks and entities of one parsed piece of `doc`."""
        from spacy.attrs import IDX, IS_SPACE, LENGTH, SENT_START

        if not len(parsed):
            return
        # Vectorised per-token attributes: a Python loop over tokens costs more than spaCy's
        # own tokenizer. SENT_START is 1 at a sentence start (-1/0 otherwise, as uint64).
        array = parsed.to_array([IDX, LENGTH, IS_SPACE, SENT_START]).astype(np.int64)
        is_word = array[:, 2] == 0
        if not is_word.any():
            return
        starts = array[:, 0] + offset
        sentence_start = array[:, 3] == 1
        sentence_start[0] = True
        token_sentence = np.cumsum(sentence_start) - 1
        word_starts = starts[is_word]
        word_ends = word_starts + array[is_word, 1]
        # Sentences made only of whitespace tokens disappear; renumber the rest densely.
        kept, first = np.unique(token_sentence[is_word], return_index=True)
        local_sentence = np.searchsorted(kept, token_sentence[is_word])
        last = np.append(first[1:], len(word_starts)) - 1
        base_sentence, base_word = doc.num_sentences, doc.num_words
        doc.sentence_starts.extend(word_starts[first].tolist())
        doc.sentence_ends.extend(word_ends[last].tolist())
        doc.sentence_paragraph.extend([paragraph] * len(kept))
        doc.word_starts.extend(word_starts.tolist())
        doc.word_ends.extend(word_ends.tolist())
        doc.word_sentence.extend((local_sentence + base_sentence).tolist())
        # words_before[t] = number of words among tokens [0, t): maps token spans to word spans.
        words_before = np.concatenate(([0], np.cumsum(is_word)))
        chunks = parsed.noun_chunks if self._has_chunks else ()
        for span in chunks:
            word_span = _word_span(words_before, local_sentence, span.start, span.end)
            if word_span:
                doc.phrase_starts.append(word_span[0] + base_word)
                doc.phrase_ends.append(word_span[1] + base_word)
        for ent in parsed.ents:
            word_span = _word_span(words_before, local_sentence, ent.start, ent.end)
            if word_span:
                doc.entity_starts.append(word_span[0] + base_word)
                doc.entity_ends.append(word_span[1] + base_word)
                doc.entity_labels.append(ent.label_)


def _word_span(
    words_before: Any, word_sentence: Any, token_start: int, token_end: int
) -> tuple[int, int] | None:
    """Word span [start, end) of a token span, clipped to the sentence holding most of its
    words; None when it holds no word (only whitespace tokens).
    """
    start, end = int(words_before[token_start]), int(words_before[token_end])
    if start >= end:
        return None
    first, last = word_sentence[start], word_sentence[end - 1]
    if first == last:
        return start, end
    # The parser and NER run independently, so an entity may straddle a sentence boundary.
    sentences = word_sentence[start:end]
    values, counts = np.unique(sentences, return_counts=True)
    best = values[int(np.argmax(counts))]
    inside = np.nonzero(sentences == best)[0]
    return start + int(inside[0]), start + int(inside[-1]) + 1
