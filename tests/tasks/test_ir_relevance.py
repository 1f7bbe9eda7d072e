"""IR relevance: BM25 against hand computation, pair semantics, pair files, properties."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ernie_style.corpus.annotate import RawDocument, RegexAnnotator, document_from_sentences
from ernie_style.pretrain.examples import CorpusContext, collate
from ernie_style.testing.model import tiny_backbone
from pretrain_tasks.ir_relevance import BM25Index, IRRelevance, passage_spans, terms
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


# --- BM25 -------------------------------------------------------------------------------------

TOY = [["a", "b", "a"], ["b", "c"], ["c", "d", "e", "f"]]


def test_bm25_matches_hand_computation():
    index = BM25Index(TOY, groups=["x", "y", "y"])
    # N = 3, avg_len = 3; idf(a) = ln(1 + 2.5 / 1.5), idf(c) = ln(1 + 1.5 / 2.5)
    idf_a, idf_c = math.log(8 / 3), math.log(1.6)
    expected = {
        0: idf_a * 2 * 2.2 / (2 + 1.2 * (0.25 + 0.75 * 3 / 3)),
        1: idf_c * 1 * 2.2 / (1 + 1.2 * (0.25 + 0.75 * 2 / 3)),
        2: idf_c * 1 * 2.2 / (1 + 1.2 * (0.25 + 0.75 * 4 / 3)),
    }
    assert expected[0] == pytest.approx(math.log(8 / 3) * 1.375)
    passages, scores = index.top_k(["a", "c"], 3)
    assert passages.tolist() == [0, 1, 2]
    assert scores == pytest.approx([expected[0], expected[1], expected[2]])
    passages, scores = index.top_k(["a", "c"], 1)
    assert passages.tolist() == [0] and scores == pytest.approx([expected[0]])
    passages, scores = index.top_k(["a", "c"], 10, exclude="x")
    assert passages.tolist() == [1, 2]
    assert index.top_k(["a", "c"], 10, exclude="y")[0].tolist() == [0]
    assert index.top_k(["zzz"], 5)[0].tolist() == []
    # a repeated query term counts once per occurrence
    assert index.top_k(["c", "c"], 1)[1] == pytest.approx([2 * expected[1]])
    with pytest.raises(ValueError, match="k >= 1"):
        index.top_k(["a"], 0)


def test_bm25_agrees_with_brute_force():
    rng = np.random.default_rng(0)
    vocab = [f"t{i}" for i in range(40)]
    weights = 1.0 / np.arange(1, 41)  # Zipf-like: common and rare terms
    passages = [
        list(rng.choice(vocab, size=int(rng.integers(0, 12)), p=weights / weights.sum()))
        for _ in range(300)
    ]
    groups = [f"g{i // 4}" for i in range(300)]
    index = BM25Index(passages, groups)
    avg = np.mean([len(p) for p in passages])
    df = Counter(t for p in passages for t in set(p))

    def score(query, passage):
        total = 0.0
        for t in query:
            tf = passage.count(t)
            if tf:
                idf = math.log(1 + (300 - df[t] + 0.5) / (df[t] + 0.5))
                total += idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len(passage) / avg))
        return total

    for query in (["t0", "t1"], ["t39"], ["t3", "t17", "t3"], ["t0", "t38", "t20"]):
        brute = sorted(
            ((-score(query, p), i) for i, p in enumerate(passages) if groups[i] != "g0"),
            key=lambda x: (round(x[0], 9), x[1]),
        )
        brute = [(i, -s) for s, i in brute if s < 0][:7]
        got_ids, got_scores = index.top_k(query, 7, exclude="g0")
        assert got_ids.tolist() == [i for i, _ in brute]
        assert got_scores == pytest.approx([s for _, s in brute])


def test_terms_and_passages():
    assert terms("Hello, WORLD! it's 2024") == ["hello", "world", "it", "s", "2024"]
    doc = document_from_sentences("d", [["A.", "B.", "C.", "D."], ["E."]])
    assert passage_spans(doc, 3) == [(0, 3), (3, 4), (4, 5)]
    assert passage_spans(doc, 1) == [(i, i + 1) for i in range(5)]


# --- self-supervised pairs ----------------------------------------------------------------------

OTHERS = {
    "p1": "Quantum mechanics is physics.",
    "p2": "Modern physics changed the city.",
    "p3": "The river flows through the valley.",
    "p4": "Farmers grow wheat and barley.",
    "p5": "Python code tends to look clean.",
}
MAIN = [["Einstein changed modern physics.", "He developed relativity."], ["Paris won a prize."]]


def build(tokenizer, title="quantum physics", **config):
    docs = [document_from_sentences("main", MAIN, title=title)]
    docs += [document_from_sentences(k, [[v]]) for k, v in OTHERS.items()]
    corpus = CorpusContext(docs, tokenizer)
    return corpus, IRRelevance(tokenizer, 64, {"top_k": 2, **config})


def toks(tokenizer, text):
    return tokenize_text(text, tokenizer).token_ids.tolist()


def test_strong_weak_irrelevant_sources(tokenizer):
    corpus, task = build(tokenizer)
    top, _ = task.passages(corpus).index.top_k(terms("quantum physics"), 2, exclude="main")
    assert [task.passages(corpus).doc_index[p] for p in top] == [1, 2]  # p1, then p2
    main_passages = [toks(tokenizer, " ".join(MAIN[0])), toks(tokenizer, MAIN[1][0])]
    texts = {key: toks(tokenizer, value) for key, value in OTHERS.items()}
    seen = {0: set(), 1: set(), 2: set()}
    for seed in range(40):
        examples = task.examples(corpus.tokenized(0), np.random.default_rng(seed), corpus)
        assert [ex.labels for ex in examples] == [0, 1, 2]
        for ex in examples:
            check_pair_invariants(ex, tokenizer, 64, 3)
            query, passage = segments(ex)
            assert query == toks(tokenizer, "quantum physics")
            if ex.labels == 0:
                assert passage in main_passages
                seen[0].add(main_passages.index(passage))
            else:
                source = next(k for k, v in texts.items() if v == passage)
                assert source in ({"p1", "p2"} if ex.labels == 1 else {"p3", "p4", "p5"})
                seen[ex.labels].add(source)
    assert seen == {0: {0, 1}, 1: {"p1", "p2"}, 2: {"p3", "p4", "p5"}}


@pytest.mark.parametrize("title", ["", "  ", "zebra", "!!"])
def test_first_sentence_query_when_title_is_empty_or_unmatched(tokenizer, title):
    corpus, task = build(tokenizer, title=title)
    for seed in range(20):
        strong, weak, other = task.examples(
            corpus.tokenized(0), np.random.default_rng(seed), corpus
        )
        for ex in (strong, weak, other):
            assert segments(ex)[0] == toks(tokenizer, MAIN[0][0])
        # the strong passage never repeats the query sentence
        assert segments(strong)[1] in (toks(tokenizer, MAIN[0][1]), toks(tokenizer, MAIN[1][0]))
        # "einstein changed modern physics": p2 shares three terms, p1 one
        assert segments(weak)[1] in (toks(tokenizer, OTHERS["p2"]), toks(tokenizer, OTHERS["p1"]))


def test_no_examples_when_a_class_is_impossible(tokenizer):
    alone = CorpusContext([document_from_sentences("main", MAIN, title="physics")], tokenizer)
    task = IRRelevance(tokenizer)
    assert task.examples(alone.tokenized(0), np.random.default_rng(0), alone) == []
    # one other document whose only passage is a weak one: no irrelevant passage exists
    docs = [alone.documents[0], document_from_sentences("p1", [[OTHERS["p1"]]])]
    pair = CorpusContext(docs, tokenizer)
    assert task.examples(pair.tokenized(0), np.random.default_rng(0), pair) == []
    one_sentence = CorpusContext(
        [document_from_sentences("s", [["Physics."]]), *docs[1:]], tokenizer
    )
    assert task.examples(one_sentence.tokenized(0), np.random.default_rng(0), one_sentence) == []


def test_index_is_shared_and_deterministic(tokenizer):
    corpus, task = build(tokenizer)
    assert task.passages(corpus) is task.passages(corpus)
    assert corpus.saved("ir_relevance-bm25-p3", None, None) is task.passages(corpus)
    first = [task.examples(corpus.tokenized(d), np.random.default_rng(5), corpus) for d in range(6)]
    again = [task.examples(corpus.tokenized(d), np.random.default_rng(5), corpus) for d in range(6)]
    assert first == again


def test_balance_on_english_documents(tokenizer, english_documents):
    corpus = CorpusContext(english_documents, tokenizer)
    task = IRRelevance(tokenizer, 48)
    rng = np.random.default_rng(0)
    labels = Counter()
    for d in range(len(english_documents)):
        examples = task.examples(corpus.tokenized(d), rng, corpus)
        assert [ex.labels for ex in examples] == [0, 1, 2]
        labels.update(ex.labels for ex in examples)
        for ex in examples:
            check_pair_invariants(ex, tokenizer, 48, 3)
    assert labels == {0: 5, 1: 5, 2: 5}


# --- pair files ---------------------------------------------------------------------------------


def test_pair_file_labels_and_modes(tokenizer, tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text(
        "query\tpassage\tlabel\nquantum\tQuantum mechanics.\tStrong\n"
        "city\tThe river.\t1\nbread\tPython code.\tirrelevant\n",
        encoding="utf-8",
    )
    corpus, task = build(tokenizer, pairs_file=str(path), pairs_mode="replace")
    assert task.examples(corpus.tokenized(0), np.random.default_rng(0), corpus) == []
    examples = task.corpus_examples(np.random.default_rng(0), corpus)
    assert [ex.labels for ex in examples] == [0, 1, 2]
    assert segments(examples[0]) == (
        toks(tokenizer, "quantum"),
        toks(tokenizer, "Quantum mechanics."),
    )
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text(
        json.dumps({"query": "a", "passage": "b", "label": 2}) + "\n", encoding="utf-8"
    )
    corpus, task = build(tokenizer, pairs_file=str(jsonl))
    assert [ex.labels for ex in task.corpus_examples(np.random.default_rng(0), corpus)] == [2]
    assert len(task.examples(corpus.tokenized(0), np.random.default_rng(0), corpus)) == 3


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.tsv", "query\tpassage\tlabel\nq\tp\t0\nq\tp\tmedium\n", "line 3"),
        ("b.csv", "query,label\nq,0\n", "line 1"),
        ("c.jsonl", '{"query": "q", "passage": "p", "label": true}\n', "line 1"),
        (
            "d.jsonl",
            '{"query": "q", "passage": "p", "label": 1}\n{"query": "q", "label": 1}\n',
            "line 2",
        ),
        ("e.jsonl", '{"query": "q", "passage": "p", "label": 3}\n', "line 1"),
        ("f.csv", 'query,passage,label\nq,p,2\n"",p,2\n', "line 3"),
    ],
)
def test_bad_rows_name_file_and_line(tokenizer, tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    corpus, task = build(tokenizer, pairs_file=str(path))
    with pytest.raises(ValueError, match=message) as error:
        task.corpus_examples(np.random.default_rng(0), corpus)
    assert name in str(error.value)


@pytest.mark.parametrize(
    "config",
    [{"top_k": 0}, {"passage_sentences": 0}, {"top_k": True}, {"pairs_mode": "both"}],
)
def test_bad_config(tokenizer, config):
    with pytest.raises(ValueError, match="ir_relevance"):
        IRRelevance(tokenizer, 64, config)


# --- properties and model ------------------------------------------------------------------------

SENTENCE = st.one_of(
    st.sampled_from(
        ["Physics is fun.", "Quantum physics!", "Über straße.", "\x00.", "The river flows."]
    ),
    st.text(max_size=15),
)
SEPARATOR = st.sampled_from([" ", "\n", "\n\n", " \n \n "])
TEXT = st.one_of(
    st.text(max_size=120),
    st.lists(st.tuples(SENTENCE, SEPARATOR), max_size=8).map(
        lambda parts: "".join(a + b for a, b in parts)
    ),
)


@settings(max_examples=40, deadline=None)
@given(
    texts=st.lists(st.tuples(st.text(max_size=12), TEXT), min_size=1, max_size=5),
    max_seq_len=st.integers(8, 40),
    top_k=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_property_arbitrary_documents(tokenizer, texts, max_seq_len, top_k, seed):
    annotator = RegexAnnotator()
    docs = [annotator.annotate_one(RawDocument(f"d{i}", t, x)) for i, (t, x) in enumerate(texts)]
    corpus = CorpusContext(docs, tokenizer)
    task = IRRelevance(tokenizer, max_seq_len, {"top_k": top_k, "passage_sentences": 2})
    for d in range(len(docs)):
        examples = task.examples(corpus.tokenized(d), np.random.default_rng(seed), corpus)
        assert [ex.labels for ex in examples] in ([], [0, 1, 2])
        assert examples == task.examples(corpus.tokenized(d), np.random.default_rng(seed), corpus)
        for ex in examples:
            assert ex.task == "ir_relevance" and ex.task_id == 6
            check_pair_invariants(ex, tokenizer, max_seq_len, 3)


def test_head_and_loss_run(tokenizer, english_documents):
    backbone = tiny_backbone(len(tokenizer))
    corpus = CorpusContext(english_documents, tokenizer)
    task = IRRelevance(tokenizer, max_seq_len=32)
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
    assert logits.shape == (3, 3)
    loss = task.loss(logits, targets)
    assert torch.isfinite(loss)
    loss.backward()


# --- the on-disk index ------------------------------------------------------------------------


def test_saved_index_is_memory_mapped_and_gives_the_same_examples(
    wiki_documents, wiki_tokenizer, tmp_path
):
    docs = wiki_documents[:30]
    in_ram = CorpusContext(docs, wiki_tokenizer)
    on_disk = CorpusContext(docs, wiki_tokenizer, index_root=tmp_path, first_document=0)
    task = IRRelevance(wiki_tokenizer, 96)
    table = task.passages(on_disk)
    assert (tmp_path / "ir_relevance-bm25-p3-docs0-30" / "meta.json").is_file()
    assert isinstance(table.index._postings, np.memmap) and isinstance(table.doc_index, np.memmap)
    assert len(list(tmp_path.glob("tokens-*-docs0-30/token_ids.npy"))) == 0  # not needed yet
    for d in range(30):
        rng_a, rng_b = np.random.default_rng(d), np.random.default_rng(d)
        # on disk, documents come from the token table (built on first use) and passages from
        # the mapped arrays: the examples are the same as from the in-memory corpus
        assert task.examples(on_disk.tokenized(d), rng_a, on_disk) == task.examples(
            in_ram.tokenized(d), rng_b, in_ram
        )
    assert len(list(tmp_path.glob("tokens-*-docs0-30/token_ids.npy"))) == 1
    # A second context (another process) maps the same files instead of building them again.
    again = CorpusContext(docs, wiki_tokenizer, index_root=tmp_path)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.npy")}
    assert task.passages(again).index.term_hash.tolist() == table.index.term_hash.tolist()
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.npy")} == before


def test_parallel_build_equals_the_serial_one(wiki_documents, tmp_path):
    from pretrain_tasks.ir_relevance import PassageTable

    docs = wiki_documents[:40]
    (tmp_path / "serial").mkdir()
    (tmp_path / "parallel").mkdir()
    PassageTable.build(docs, 3, tmp_path / "serial", num_proc=1, chunk=7)
    PassageTable.build(docs, 3, tmp_path / "parallel", num_proc=2, chunk=7)
    serial = PassageTable.load(tmp_path / "serial")
    parallel = PassageTable.load(tmp_path / "parallel")
    for key, array in serial.index.arrays().items():
        assert np.array_equal(array, parallel.index.arrays()[key]), key
    assert np.array_equal(serial.first_passage, parallel.first_passage)
    # and the same as the in-RAM index of the same passages' terms
    passages = [
        terms(doc.text[doc.sentence_starts[s] : doc.sentence_ends[e - 1]])
        for doc in docs
        for s, e in passage_spans(doc, 3)
    ]
    reference = BM25Index(passages)
    assert np.array_equal(reference.term_hash, serial.index.term_hash)
    assert np.array_equal(reference.arrays()["weights"], serial.index.arrays()["weights"])


def test_held_out_queries_draw_passages_from_the_training_corpus(tokenizer):
    pool = CorpusContext([document_from_sentences(k, [[v]]) for k, v in OTHERS.items()], tokenizer)
    heldout_doc = document_from_sentences("main", MAIN, title="quantum physics")
    heldout = CorpusContext([heldout_doc], tokenizer, draw_from=pool)
    task = IRRelevance(tokenizer, 64, {"top_k": 2})
    texts = {key: toks(tokenizer, value) for key, value in OTHERS.items()}
    for seed in range(20):
        strong, weak, other = task.examples(
            heldout.tokenized(0), np.random.default_rng(seed), heldout
        )
        source = {
            label: next(k for k, v in texts.items() if v == segments(ex)[1])
            for label, ex in ((1, weak), (2, other))
        }
        assert source[1] in {"p1", "p2"} and source[2] in {"p3", "p4", "p5"}
        assert segments(strong)[1] in (
            toks(tokenizer, " ".join(MAIN[0])),
            toks(tokenizer, MAIN[1][0]),
        )
    # Alone (no pool), the one held-out document has no other passage: no example at all.
    assert (
        task.examples(
            heldout.tokenized(0), np.random.default_rng(0), CorpusContext([heldout_doc], tokenizer)
        )
        == []
    )


def test_the_labels_carry_a_lexical_signal_a_model_can_learn(wiki_documents, wiki_tokenizer):
    # Query-passage term overlap separates strong and weak passages from irrelevant ones on
    # real articles, for held-out documents drawn against the training pool as in training
    # (strong vs weak is the hard part: both share query terms by construction).
    train = CorpusContext(wiki_documents[:80], wiki_tokenizer)
    heldout = CorpusContext(wiki_documents[80:], wiki_tokenizer, draw_from=train)
    task = IRRelevance(wiki_tokenizer, 128)
    shares = {0: [], 1: [], 2: []}
    for d in range(len(heldout)):
        for example in task.examples(heldout.tokenized(d), np.random.default_rng(d), heldout):
            query, passage = (set(part) for part in segments(example))
            shares[example.labels].append(len(query & passage) / max(len(query), 1))
    means = {label: float(np.mean(values)) for label, values in shares.items()}
    assert len(shares[0]) == len(shares[1]) == len(shares[2]) >= 15
    assert min(means[0], means[1]) > means[2] + 0.1, means
