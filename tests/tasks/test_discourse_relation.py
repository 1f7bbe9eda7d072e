"""Discourse relation: marker matching and removal, mined pairs, pair files, properties."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ernie_style.corpus.annotate import RawDocument, RegexAnnotator, document_from_sentences
from ernie_style.pretrain.examples import CorpusContext, collate
from ernie_style.testing.model import tiny_backbone
from pretrain_tasks.discourse_relation import DISCOURSE_MARKERS, DiscourseRelation, match_marker
from pretrain_tasks.pair_files import tokenize_text


def segments(example) -> tuple[list[int], list[int]]:
    types = example.token_type_ids
    first = [t for t, k in zip(example.input_ids, types, strict=True) if k == 0]
    second = [t for t, k in zip(example.input_ids, types, strict=True) if k == 1]
    return first[1:-1], second[:-1]


def check_pair_invariants(example, tokenizer, max_seq_len: int, num_labels: int) -> None:
    ids, types = example.input_ids, example.token_type_ids
    assert len(ids) == len(types) <= max_seq_len
    assert 0 <= example.labels < num_labels
    assert ids[0] == tokenizer.cls_token_id
    assert sorted(set(types)) == [0, 1] and types == sorted(types)
    ends = [k for k in range(len(ids)) if k + 1 == len(ids) or types[k + 1] != types[k]]
    assert [ids[k] for k in ends] == [tokenizer.sep_token_id] * 2
    assert ids.count(tokenizer.sep_token_id) == 2


def mine(tokenizer, paragraphs, max_seq_len=64, **config):
    doc = document_from_sentences("d", paragraphs)
    corpus = CorpusContext([doc], tokenizer)
    task = DiscourseRelation(tokenizer, max_seq_len, config)
    return task.examples(corpus.tokenized(0), np.random.default_rng(0), corpus)


def tokens(tokenizer, text: str) -> list[int]:
    return tokenize_text(text, tokenizer).token_ids.tolist()


def test_inventory():
    assert len(DISCOURSE_MARKERS) == len(set(DISCOURSE_MARKERS)) == 28
    assert all(m == m.lower().strip() for m in DISCOURSE_MARKERS)


def test_marker_removed_and_label(tokenizer):
    examples = mine(tokenizer, [["She stayed home.", "However, he left."]])
    assert len(examples) == 1
    first, second = segments(examples[0])
    assert first == tokens(tokenizer, "She stayed home.")
    assert second == tokens(tokenizer, "he left.")
    assert examples[0].labels == DISCOURSE_MARKERS.index("however")


def test_longest_marker_wins():
    words = ["On", "the", "other", "hand", ",", "prices", "rose"]
    assert match_marker(words, ("on", "on the other hand")) == (1, 5)
    assert match_marker(words, ("on the other hand", "on")) == (0, 5)
    assert match_marker(words) == (DISCOURSE_MARKERS.index("on the other hand"), 5)
    assert match_marker(["On", "Monday", "it", "rained"], ("on", "on the other hand")) == (0, 1)


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["HOWEVER", "he", "left"], (0, 1)),  # case-insensitive, no comma to drop
        (["For", "Instance", ",", "x"], (DISCOURSE_MARKERS.index("for instance"), 3)),
        (["Thusly", ",", "x"], None),  # whole words only
        (["However-minded", "people"], None),
        (["Because", "of", "rain", ",", "we", "stayed"], None),  # prepositional use
        (["Instead", "of", "braces"], None),
        (["Because", "it", "rained"], (DISCOURSE_MARKERS.index("because"), 1)),
        # Prepositional openers: the leftover "to"/"of" would give the label away.
        (["In", "addition", "to", "rain", ",", "it", "snowed"], None),
        (["In", "contrast", "to", "Paris"], None),
        (["As", "a", "result", "of", "the", "war"], None),
        (["Similarly", "to", "cats"], None),
        (["By", "contrast", "with", "x"], None),
        # Punctuation after the marker goes with it, whichever mark it is.
        (["However", ";", "x"], (0, 2)),
        (["Thus", "--", "x"], (DISCOURSE_MARKERS.index("thus"), 2)),
        (["Moreover", ":", "x"], (DISCOURSE_MARKERS.index("moreover"), 2)),
        (["Hence", "—", "x"], (DISCOURSE_MARKERS.index("hence"), 2)),
        (["In"], None),
        ([], None),
    ],
)
def test_match_marker_cases(words, expected):
    assert match_marker(words) == expected


def test_mined_pairs_paragraph_rules(tokenizer):
    paragraphs = [
        ["The sun rose.", "Meanwhile, the town slept."],
        ["In fact it was cold."],  # next paragraph: still a pair
        [],  # an empty paragraph makes the next one two paragraphs away
        ["Therefore, we stayed inside."],
    ]
    examples = mine(tokenizer, paragraphs)
    assert [ex.labels for ex in examples] == [
        DISCOURSE_MARKERS.index("meanwhile"),
        DISCOURSE_MARKERS.index("in fact"),
    ]
    assert segments(examples[1]) == (
        tokens(tokenizer, "Meanwhile, the town slept."),
        tokens(tokenizer, "it was cold."),
    )


def test_on_real_text_no_kept_word_gives_the_marker_away(wiki_documents):
    # Every sentence of the Wikipedia sample: where a marker opens it, the input kept after the
    # marker never starts with punctuation, nor with the "to"/"of" of a prepositional opener
    # ("In addition to ...", which the sample has; a "to" after a removed comma is a clause).
    matched, prepositional = 0, 0
    for doc in wiki_documents:
        for s in range(doc.num_sentences):
            words = [doc.word(w) for w in range(*doc.sentence_word_range(s))]
            lowered = [w.casefold() for w in words]
            opens_with_preposition = any(
                lowered[: len(m.split()) + 1] == [*m.split(), p]
                for m in DISCOURSE_MARKERS
                for p in ("to", "of", "with")
            )
            prepositional += opens_with_preposition
            match = match_marker(words)
            if match is None:
                continue
            matched += 1
            assert not opens_with_preposition, words[:6]
            kept = words[match[1] :]
            assert not kept or kept[0] not in {",", ";", ":", "--", "-"}, words[:6]
    assert matched > 50 and prepositional > 0


def test_marker_alone_or_first_sentence_gives_nothing(tokenizer):
    assert mine(tokenizer, [["However, he left.", "Thus.", "Finally,"]]) == []
    assert mine(tokenizer, [["Moreover, a."]]) == []


def test_english_documents_marker_pairs(tokenizer, english_documents):
    corpus = CorpusContext(english_documents, tokenizer)
    task = DiscourseRelation(tokenizer)
    labels = set()
    for d in range(len(english_documents)):
        for ex in task.examples(corpus.tokenized(d), np.random.default_rng(0), corpus):
            check_pair_invariants(ex, tokenizer, 128, task.num_labels)
            labels.add(DISCOURSE_MARKERS[ex.labels])
    # "Because of" and "Instead of" openings are not connectives
    assert labels == {
        "however",
        "for example",
        "meanwhile",
        "as a result",
        "therefore",
        "in addition",
        "thus",
    }


def write(path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_pair_file_formats(tokenizer, tmp_path):
    rows = [("It rained.", "However, we went out.", "However"), ("A b.", "c d.", "in  fact")]
    tsv = write(
        tmp_path / "p.tsv",
        "sentence1\tsentence2\tlabel\n\n" + "".join(f"{a}\t{b}\t{c}\n" for a, b, c in rows),
    )
    csv = write(
        tmp_path / "p.csv",
        'label,sentence1,sentence2\n"However","It rained.","However, we went out."\n'
        "in  fact,A b.,c d.\n",
    )
    keys = ("sentence1", "sentence2", "label")
    jsonl = write(
        tmp_path / "p.jsonl",
        "".join(json.dumps(dict(zip(keys, r, strict=True))) + "\n" for r in rows),
    )
    expected = None
    for path in (tsv, csv, jsonl):
        task = DiscourseRelation(tokenizer, 64, {"pairs_file": path})
        examples = task.corpus_examples(np.random.default_rng(0), None)
        assert [ex.labels for ex in examples] == [0, DISCOURSE_MARKERS.index("in fact")]
        # the labelled marker is stripped from sentence2 of a file row as well
        assert segments(examples[0]) == (
            tokens(tokenizer, "It rained."),
            tokens(tokenizer, "we went out."),
        )
        if expected is not None:
            assert examples == expected
        expected = examples


def test_a_pair_file_row_never_shows_its_label(tokenizer, tmp_path):
    rows = [
        ("It rained.", "The roads, however, were dry.", "however"),  # mid-sentence
        ("It rained.", "Thus, the roads were wet.", "however"),  # another opener: removed too
        ("It rained.", "In fact; the roads were wet, in fact.", "in fact"),
    ]
    keys = ("sentence1", "sentence2", "label")
    path = write(
        tmp_path / "p.jsonl",
        "".join(json.dumps(dict(zip(keys, r, strict=True))) + "\n" for r in rows),
    )
    task = DiscourseRelation(tokenizer, 64, {"pairs_file": path})
    examples = task.corpus_examples(np.random.default_rng(0), None)
    # The marker goes with its punctuation: no stray comma is left where it stood.
    assert [segments(e)[1] for e in examples] == [
        tokens(tokenizer, "The roads were dry."),
        tokens(tokenizer, "the roads were wet."),
        tokens(tokenizer, "the roads were wet."),
    ]


def test_pair_file_modes_and_cache(tokenizer, tmp_path):
    path = tmp_path / "p.jsonl"
    write(path, json.dumps({"sentence1": "x y.", "sentence2": "z.", "label": "thus"}) + "\n")
    doc = [["She stayed home.", "However, he left."]]
    assert len(mine(tokenizer, doc, pairs_file=str(path))) == 1  # add: mined too
    assert mine(tokenizer, doc, pairs_file=str(path), pairs_mode="replace") == []
    task = DiscourseRelation(tokenizer, 64, {"pairs_file": str(path), "pairs_mode": "replace"})
    first = task.corpus_examples(np.random.default_rng(0), None)
    path.unlink()  # loaded once, cached
    assert task.corpus_examples(np.random.default_rng(1), None) == first
    assert first[0].labels == DISCOURSE_MARKERS.index("thus")
    assert DiscourseRelation(tokenizer).corpus_examples(np.random.default_rng(0), None) == []


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.tsv", "sentence1\tsentence2\tlabel\nA.\tB.\thowever\nA.\tB.\tbecause so\n", "line 3"),
        ("b.tsv", "sentence1\tsentence2\tlabel\nA.\tB.\n", "line 2"),
        ("c.tsv", "sentence1\tlabel\nA.\thowever\n", "line 1"),
        (
            "d.jsonl",
            '{"sentence1": "A.", "sentence2": "B.", "label": "thus"}\n\n{"x": 1}\n',
            "line 3",
        ),
        ("e.jsonl", '{"sentence1": "A.", "sentence2": "B.", "label": "thus"}\n{oops\n', "line 2"),
        ("f.jsonl", '{"sentence1": "A.", "sentence2": "", "label": "thus"}\n', "line 1"),
        ("g.jsonl", '{"sentence1": "A.", "sentence2": "B.", "label": 3}\n', "line 1"),
        ("h.jsonl", '["A.", "B.", "thus"]\n', "line 1"),
        ("i.csv", 'sentence1,sentence2,label\n"multi\nline",B.,thus\nA.,B.,nope\n', "line 4"),
        ("j.jsonl", '{"sentence1": "A.", "sentence2": "However,", "label": "however"}\n', "line 1"),
    ],
)
def test_bad_rows_name_file_and_line(tokenizer, tmp_path, name, text, message):
    path = write(tmp_path / name, text)
    task = DiscourseRelation(tokenizer, 64, {"pairs_file": path})
    with pytest.raises(ValueError, match=message) as error:
        task.corpus_examples(np.random.default_rng(0), None)
    assert name in str(error.value)


def test_bad_config(tokenizer, tmp_path):
    good = write(tmp_path / "p.tsv", "sentence1\tsentence2\tlabel\n")
    with pytest.raises(ValueError, match="pairs_mode"):
        DiscourseRelation(tokenizer, 64, {"pairs_file": good, "pairs_mode": "merge"})
    with pytest.raises(ValueError, match="needs a pairs_file"):
        DiscourseRelation(tokenizer, 64, {"pairs_mode": "replace"})
    with pytest.raises(FileNotFoundError, match=r"missing\.tsv"):
        DiscourseRelation(tokenizer, 64, {"pairs_file": str(tmp_path / "missing.tsv")})
    with pytest.raises(ValueError, match="unknown option"):
        DiscourseRelation(tokenizer, 64, {"pair_file": good})
    odd = write(tmp_path / "p.xlsx", "x")
    task = DiscourseRelation(tokenizer, 64, {"pairs_file": odd})
    with pytest.raises(ValueError, match="format"):
        task.corpus_examples(np.random.default_rng(0), None)


SENTENCE = st.one_of(
    st.sampled_from(
        [
            *("However, it rained.", "On the other hand prices rose.", "For example, x."),
            *("Because of rain, we left.", "In fact it is.", "Thus.", "Finally,", "Ünïcode ok."),
            *("\x00 however, b.", "Plain sentence here."),
        ]
    ),
    st.text(max_size=15),
)
SEPARATOR = st.sampled_from([" ", "\n", "\n\n", " \n \n "])
MARKER_TEXT = st.lists(st.tuples(SENTENCE, SEPARATOR), max_size=8).map(
    lambda parts: "".join(a + b for a, b in parts)
)


@settings(max_examples=40, deadline=None)
@given(
    texts=st.lists(st.one_of(st.text(max_size=120), MARKER_TEXT), min_size=1, max_size=4),
    max_seq_len=st.integers(8, 40),
)
def test_property_arbitrary_documents(tokenizer, texts, max_seq_len):
    annotator = RegexAnnotator()
    docs = [annotator.annotate_one(RawDocument(f"d{i}", "", x)) for i, x in enumerate(texts)]
    corpus = CorpusContext(docs, tokenizer)
    task = DiscourseRelation(tokenizer, max_seq_len)
    for d in range(len(docs)):
        examples = task.examples(corpus.tokenized(d), np.random.default_rng(0), corpus)
        assert len(examples) <= max(docs[d].num_sentences - 1, 0)
        for ex in examples:
            assert ex.task == "discourse_relation" and ex.task_id == 5
            check_pair_invariants(ex, tokenizer, max_seq_len, len(DISCOURSE_MARKERS))


def test_head_and_loss_run(tokenizer, english_documents):
    backbone = tiny_backbone(len(tokenizer))
    corpus = CorpusContext(english_documents, tokenizer)
    task = DiscourseRelation(tokenizer, max_seq_len=32)
    examples = task.examples(corpus.tokenized(0), np.random.default_rng(0), corpus)
    batch = collate(examples, tokenizer.pad_token_id)
    out = backbone(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        token_type_ids=batch["token_type_ids"],
        task_type_ids=batch["task_type_ids"],
    )
    logits, targets = task.build_head(backbone)(
        out.last_hidden_state, out.pooler_output, batch["labels"]
    )
    assert logits.shape == (len(examples), len(DISCOURSE_MARKERS))
    loss = task.loss(logits, targets)
    assert torch.isfinite(loss)
    loss.backward()
