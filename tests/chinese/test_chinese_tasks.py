"""Every task on Chinese text, and the surface shortcuts closed for both languages (issue 26):
capitalization left out on caseless text, Chinese connectives, token-document relation that
word frequency cannot predict, sentence reordering that the [SEP] count cannot give away; and
the shortcut audit on real Chinese news (MSRA): sentence endings, segment lengths and word
frequency tell sentence reordering, sentence distance and token-document relation nothing."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest

from ernie_style.config import from_dict
from ernie_style.corpus.document import Document
from ernie_style.corpus.prepared import load_corpus
from ernie_style.pretrain.config import PretrainConfig
from ernie_style.pretrain.examples import IGNORE_INDEX, CorpusContext, TokenizedDocument
from ernie_style.tokenizer import load_tokenizer
from pretrain_tasks.discourse_relation import (
    DISCOURSE_MARKERS_ZH,
    DiscourseRelation,
    match_marker_zh,
    strip_markers,
)
from pretrain_tasks.sentence_distance import SentenceDistance
from pretrain_tasks.sentence_reordering import SentenceReordering
from pretrain_tasks.token_document_relation import TokenDocumentRelation


def _chinese(corpus_dir):
    tokenizer = load_tokenizer(corpus_dir / "tokenizer")
    documents = [Document.from_row(row) for row in load_corpus(corpus_dir)]
    return tokenizer, documents


def test_capitalization_is_left_out_on_caseless_text(chinese_corpus):
    tasks = {"knowledge_masking": {"budget": 4}, "capitalization": {"budget": 4}}
    config = from_dict(PretrainConfig, {"data": {"corpus": str(chinese_corpus)}, "tasks": tasks})
    config.validate()
    assert list(config.tasks) == ["knowledge_masking"]
    assert "capitalization (the corpus is in a language without letter case)" in (
        config.describe_left_out()
    )
    alone = {"data": {"corpus": str(chinese_corpus)}, "tasks": {"capitalization": {"budget": 4}}}
    with pytest.raises(ValueError, match="nothing to train on this zh corpus"):
        from_dict(PretrainConfig, alone).validate()


def test_chinese_connectives_label_pairs_and_leave_no_trace(chinese_corpus):
    tokenizer, documents = _chinese(chinese_corpus)
    task = DiscourseRelation(tokenizer, max_seq_len=128, language="zh")
    assert task.num_labels == len(DISCOURSE_MARKERS_ZH)
    corpus = CorpusContext(documents, tokenizer)
    labels, rng = Counter(), np.random.default_rng(0)
    for document in documents:
        for example in task.examples(TokenizedDocument(document, tokenizer), rng, corpus):
            marker = DISCOURSE_MARKERS_ZH[example.labels]
            labels[marker] += 1
            sep = example.input_ids.index(tokenizer.sep_token_id)
            second = tokenizer.decode(example.input_ids[sep + 1 :], skip_special_tokens=True)
            second = second.replace(" ", "")
            # Neither the marker nor its comma is left at the start of the second sentence.
            assert not second.startswith(marker[0]) and not second.startswith("，"), second
    assert {"但是", "因此", "此外", "然而", "例如"} <= set(labels)
    # Boundaries: 但是 is one marker (not 但 plus 是), 但愿 is no marker.
    assert match_marker_zh(["但是", "，", "他"]) == (DISCOURSE_MARKERS_ZH.index("但是"), 2)
    assert match_marker_zh(["但", "是", "他"]) == (DISCOURSE_MARKERS_ZH.index("但是"), 2)
    assert match_marker_zh(["但愿", "如此"]) is None


@pytest.mark.parametrize(
    ("text", "marker", "expected"),
    [
        ("In addition to this, the plan works.", "in addition", "this, the plan works."),
        ("Because of the rain, we stayed.", "because", "the rain, we stayed."),
        (
            "The economy was poor.However, the people stayed.",
            "however",
            "The economy was poor. the people stayed.",
        ),
        ("The results, however, are clear.", "however", "The results are clear."),
        ("Thus it ended; thus, it began.", "thus", "it ended; it began."),
    ],
)
def test_pair_file_markers_leave_no_preposition_run_on_or_stray_comma(text, marker, expected):
    assert strip_markers(text, marker) == expected


def test_pair_file_markers_in_chinese():
    assert strip_markers("但是，他说因此我们走了。", "因此", "zh") == "他说我们走了。"


def _labelled_words(task, documents, tokenizer, seeds=(0,)):
    """(first-token id, label) of every labelled word of the task's examples, one pass over
    the documents per seed."""
    corpus = CorpusContext(documents, tokenizer)
    out = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        for document in documents:
            for example in task.examples(TokenizedDocument(document, tokenizer), rng, corpus):
                for token, label in zip(example.input_ids, example.labels, strict=True):
                    if label != IGNORE_INDEX:
                        out.append((token, label))
    return out


def test_word_frequency_does_not_predict_token_document_relation(wiki_documents, wiki_tokenizer):
    """Surface baselines fitted on even documents, scored on odd ones (the issue's audit): the
    300 most frequent words -> 1, and the majority label of each frequency band."""
    task = TokenDocumentRelation(wiki_tokenizer, max_seq_len=128)
    _assert_frequency_predicts_nothing(task, wiki_documents[:60], wiki_tokenizer, seeds=(0,))


def _assert_frequency_predicts_nothing(task, documents, tokenizer, seeds):
    """Fit on even documents, score on odd ones: the 300 most frequent words -> 1, and the
    majority label of each log2-frequency band, both near the 50% majority."""
    fit = _labelled_words(task, documents[0::2], tokenizer, seeds)
    test = _labelled_words(task, documents[1::2], tokenizer, seeds)
    counts = Counter(
        token for document in documents[0::2] for token in _tokens(document, tokenizer)
    )
    frequent = {token for token, _ in counts.most_common(300)}
    stump = np.mean([int(token in frequent) == label for token, label in test])
    by_band: dict[int, Counter] = defaultdict(Counter)
    for token, label in fit:
        by_band[int(np.log2(counts[token] + 1))][label] += 1
    band_majority = {band: c.most_common(1)[0][0] for band, c in by_band.items()}
    banded = np.mean([band_majority.get(int(np.log2(counts[t] + 1)), 1) == y for t, y in test])
    majority = max(Counter(y for _, y in test).values()) / len(test)
    print(f"stump {stump:.3f}, frequency bands {banded:.3f}, majority {majority:.3f}")
    assert len(test) > 500 and majority < 0.56
    assert stump < 0.58 and banded < 0.58


def _tokens(document, tokenizer):
    return TokenizedDocument(document, tokenizer).tokens(0, document.num_words).tolist()


def test_sentence_reordering_gives_multi_sentence_paragraphs_two_segments_or_more(
    wiki_documents, wiki_tokenizer
):
    docs = wiki_documents[:30]
    corpus = CorpusContext(docs, wiki_tokenizer)

    def one_segment_share(**config):
        task = SentenceReordering(wiki_tokenizer, max_seq_len=128, config=config)
        rng, labels = np.random.default_rng(0), []
        for document in docs:
            tokenized = TokenizedDocument(document, wiki_tokenizer)
            labels += [e.labels for e in task.examples(tokenized, rng, corpus)]
        return np.mean([label == 0 for label in labels])

    single_sentence = np.mean([len(p) == 1 for document in docs for p in document.paragraphs()])
    default, ernie = one_segment_share(), one_segment_share(min_segments=1)
    print(f"one-segment examples: {default:.3f} (min_segments 1: {ernie:.3f})")
    # Only paragraphs of one sentence stay one segment (a window may hold one sentence too).
    assert default <= single_sentence + 0.05
    assert ernie > default + 0.15


def test_ir_relevance_indexes_chinese_segmenter_words(chinese_corpus):
    from pretrain_tasks.ir_relevance import IRRelevance, segment_with_index

    tokenizer, documents = _chinese(chinese_corpus)
    task = IRRelevance(tokenizer, max_seq_len=128, language="zh")
    corpus = CorpusContext(documents, tokenizer)
    index = task.passages(corpus).index
    # BM25 terms are segmenter words: 长江 is one, the clause it opens is none.
    assert index.has_term("长江") and index.has_term("北京大学")
    assert not index.has_term("长江是中国最长的河流")
    # An unannotated title is segmented against the indexed words (longest match first).
    assert segment_with_index("北京大学的人工智能实验室", index)[:2] == ["北京大学", "的"]
    rng, labels = np.random.default_rng(0), Counter()
    for document in documents:
        for example in task.examples(TokenizedDocument(document, tokenizer), rng, corpus):
            labels[example.labels] += 1
    assert set(labels) == {0, 1, 2}  # strong, weak (BM25 neighbours), irrelevant


def _segments(example, sep_id):
    """The segments an example shows, split at [SEP] (without [CLS])."""
    segments, current = [], []
    for token in example.input_ids[1:]:
        if token == sep_id:
            segments.append(current)
            current = []
        else:
            current.append(token)
    return segments


def _lookup_accuracy(features, labels, key):
    """A lookup table from `key(features)` to the majority label, fitted on the first half of
    the examples and scored on the second half (unseen keys get the overall majority)."""
    half = len(labels) // 2
    table: dict = defaultdict(Counter)
    for feature, label in zip(features[:half], labels[:half], strict=True):
        table[key(feature)][label] += 1
    majority = Counter(labels[:half]).most_common(1)[0][0]
    hits = [
        (table[key(f)].most_common(1)[0][0] if key(f) in table else majority) == y
        for f, y in zip(features[half:], labels[half:], strict=True)
    ]
    return sum(hits) / len(hits)


@pytest.mark.parametrize("task_class", [SentenceReordering, SentenceDistance])
def test_chinese_surface_cues_tell_no_more_than_the_segment_count(chinese_news, task_class):
    """The issue's shortcut audit on Chinese news: which segments end in 。！？, the rank order
    of the segment lengths and their lengths in 8-token bands predict the label no better than
    the number of segments alone (visible by design: the m of a reordering)."""
    documents, tokenizer = chinese_news
    task = task_class(tokenizer, max_seq_len=128, language="zh")
    corpus = CorpusContext(documents, tokenizer)
    examples = []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        for i in range(len(documents)):
            examples += task.examples(corpus.tokenized(i), rng, corpus)
    terminators = set(tokenizer.convert_tokens_to_ids(list("。！？")))
    features, labels = [], [int(example.labels) for example in examples]
    for example in examples:
        segments = _segments(example, tokenizer.sep_token_id)
        lengths = [len(s) for s in segments]
        features.append(
            (
                len(segments),
                tuple(bool(s) and s[-1] in terminators for s in segments),
                tuple(np.argsort(lengths, kind="stable").tolist()),
                tuple(min(n // 8, 6) for n in lengths),
            )
        )
    by_count = _lookup_accuracy(features, labels, lambda f: f[0])
    by_surface = {
        "ending": _lookup_accuracy(features, labels, lambda f: f[:2]),
        "length order": _lookup_accuracy(features, labels, lambda f: (f[0], f[2])),
        "length bands": _lookup_accuracy(features, labels, lambda f: (f[0], f[3])),
    }
    print(f"{task.name}: by segment count {by_count:.3f}, by surface {by_surface}")
    assert len(examples) > 3000 and by_count < 0.5  # enough examples, and no giveaway by count
    for cue, accuracy in by_surface.items():
        assert accuracy <= by_count + 0.04, (cue, accuracy, by_count)


def test_word_frequency_does_not_predict_token_document_relation_on_chinese(chinese_news):
    """The frequency audit of the English test above, on jieba's words of Chinese news (short
    documents label about one word each, so four passes)."""
    documents, tokenizer = chinese_news
    task = TokenDocumentRelation(tokenizer, max_seq_len=128, language="zh")
    _assert_frequency_predicts_nothing(task, documents, tokenizer, seeds=range(4))
