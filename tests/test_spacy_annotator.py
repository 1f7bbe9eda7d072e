"""spaCy annotator: schema, entities, noun chunks, line/paragraph boundaries, long lines, and a
property test of readers + both annotators over arbitrary text.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ernie_style.corpus.annotate import RawDocument, RegexAnnotator, normalize_text
from ernie_style.corpus.readers import open_sources, read_documents
from ernie_style.corpus.spacy_annotator import SpacyAnnotator, _word_span, piece_spans


@pytest.fixture(scope="module")
def spacy_annotator():
    return SpacyAnnotator()


def spans(doc, kind):
    words = doc.words()
    starts, ends = getattr(doc, f"{kind}_starts"), getattr(doc, f"{kind}_ends")
    return [" ".join(words[s:e]) for s, e in zip(starts, ends, strict=True)]


def test_obama_entities_and_noun_chunks(spacy_annotator):
    (doc,) = spacy_annotator.annotate(
        [RawDocument("obama", "Obama", "Barack Obama visited New York City in 2009.")]
    )
    doc.validate()
    assert doc.words() == ["Barack", "Obama", "visited", "New", "York", "City", "in", "2009", "."]
    assert list(zip(spans(doc, "entity"), doc.entity_labels, strict=True)) == [
        ("Barack Obama", "PERSON"),
        ("New York City", "GPE"),
        ("2009", "DATE"),
    ]
    assert "Barack Obama" in spans(doc, "phrase")
    assert "New York City" in spans(doc, "phrase")
    assert doc.has_annotations
    assert doc.sentence_starts == [0] and doc.sentence_ends == [len(doc.text)]


def test_sentences_never_cross_lines_or_paragraphs(spacy_annotator):
    text = "the cat sat on\nthe mat and slept. It was warm.\n\nA new paragraph starts here."
    (doc,) = spacy_annotator.annotate([RawDocument("d", "", text)])
    doc.validate()
    sentences = [doc.sentence(i) for i in range(doc.num_sentences)]
    assert sentences == [
        "the cat sat on",
        "the mat and slept.",
        "It was warm.",
        "A new paragraph starts here.",
    ]
    assert doc.sentence_paragraph == [0, 0, 0, 1]
    assert all("\n" not in s for s in sentences)


def test_whitespace_tokens_are_not_words_and_text_is_normalized(spacy_annotator):
    raw = "  Tabs\there   and  spaces .  \r\nNext\u00a0line  "
    (doc,) = spacy_annotator.annotate([RawDocument("w", "", raw)])
    doc.validate()
    assert doc.text == normalize_text(raw)
    assert doc.words() == ["Tabs", "here", "and", "spaces", ".", "Next", "line"]


def test_empty_document_has_no_sentences(spacy_annotator):
    docs = spacy_annotator.annotate([RawDocument("e", "", " \n\t\n"), RawDocument("x", "", "Hi.")])
    assert docs[0].num_sentences == 0 and docs[0].num_words == 0
    assert docs[1].words() == ["Hi", "."]


def test_long_lines_are_parsed_in_pieces_without_losing_text(spacy_annotator):
    small = SpacyAnnotator(nlp=spacy_annotator.nlp, max_piece_chars=60)
    text = "Paris is big. " * 20 + "x" * 150 + " tail words here"
    (doc,) = small.annotate([RawDocument("long", "", text)])
    doc.validate()
    assert "".join(doc.words()) == re.sub(r"\s", "", text)
    assert max(e - s for s, e in zip(doc.sentence_starts, doc.sentence_ends, strict=True)) <= 60


@pytest.mark.parametrize("max_chars", [5, 17, 100])
def test_piece_spans_cover_the_range_within_the_limit(max_chars):
    text = "One two. Three four five! " * 7 + "abcdefghijklmnopqrstuvwxyz" * 3
    pieces = list(piece_spans(text, 3, len(text) - 2, max_chars))
    assert pieces[0][0] == 3 and pieces[-1][1] == len(text) - 2
    assert all(a < b <= a + max_chars for a, b in pieces)
    assert all(prev[1] == nxt[0] for prev, nxt in itertools.pairwise(pieces))


def test_piece_spans_prefer_sentence_ends():
    # The cut is searched in the second half of each window: after "cc. ", not at a later space.
    text = "Aaaa bbbb cc. Cccc dddd eeee ffff"
    assert list(piece_spans(text, 0, len(text), 20)) == [(0, 14), (14, len(text))]


def test_word_span_clips_cross_sentence_spans_and_drops_empty_ones():
    # tokens: w0 w1 SPACE w2 w3 w4; words 0,1 in sentence 0 and words 2,3,4 in sentence 1
    is_word = np.array([1, 1, 0, 1, 1, 1])
    words_before = np.concatenate(([0], np.cumsum(is_word)))
    word_sentence = np.array([0, 0, 1, 1, 1])
    assert _word_span(words_before, word_sentence, 0, 2) == (0, 2)
    assert _word_span(words_before, word_sentence, 2, 3) is None
    assert _word_span(words_before, word_sentence, 1, 5) == (2, 4)
    assert _word_span(words_before, word_sentence, 0, 4) == (0, 2)


# Arbitrary text, including control characters, blank lines and non-UTF-8 byte junk.
_TEXT = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(list("\n\n\r\t \u00a0\u2028\x0b\x0c\x1c\x85.!?\"')(")),
    ),
    max_size=300,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=_TEXT, junk=st.binary(max_size=8))
def test_property_readers_and_annotators_keep_every_character(
    text, junk, tmp_path_factory, spacy_annotator
):
    folder = tmp_path_factory.mktemp("prop")
    data = junk + text.encode("utf-8")
    (folder / "plain.txt").write_bytes(data)
    (folder / "rows.jsonl").write_text(json.dumps({"text": text}) + "\n", encoding="utf-8")
    stats = Counter()
    sources = open_sources([folder / "plain.txt", folder / "rows.jsonl"])
    raws = list(read_documents(sources, stats))
    decoded = data.removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors="replace")
    # The text reader keeps every non-whitespace character, in order, across its documents.
    plain = [r for r in raws if r.id.startswith("plain-")]
    assert "".join(_non_space(r.text) for r in plain) == _non_space(decoded)
    for annotator in (RegexAnnotator(), spacy_annotator):
        for doc in annotator.annotate(raws):
            doc.validate()
            covered = np.zeros(len(doc.text), dtype=bool)
            for s, e in zip(doc.word_starts, doc.word_ends, strict=True):
                covered[s:e] = True
            lost = {
                c for c, ok in zip(doc.text, covered, strict=True) if not ok and not c.isspace()
            }
            assert not lost, (annotator.name, lost)


def _non_space(text: str) -> str:
    return "".join(c for c in text if not c.isspace())
