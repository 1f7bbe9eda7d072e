"""Chinese annotation: sentences, language detection, segmenter words, entities, phrases, the
character vocabulary, and whole-word knowledge masking (issue 26)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from ernie_style.corpus.annotate import RawDocument, RegexAnnotator, chinese_sentence_spans
from ernie_style.corpus.document import Document
from ernie_style.corpus.language import corpus_language, detect_language, resolve_language
from ernie_style.corpus.prepare import PrepareConfig, prepare_corpus
from ernie_style.corpus.prepared import load_corpus
from ernie_style.pretrain.examples import IGNORE_INDEX, TokenizedDocument
from ernie_style.tokenizer import load_tokenizer
from pretrain_tasks.knowledge_masking import KnowledgeMasking
from tests.chinese.conftest import CHINESE_ARTICLES

HAN = re.compile(r"[\u4e00-\u9fff]")
#: Hand-segmented sentences (PKU-style words) to score a segmenter against.
GOLD_SEGMENTATION = [
    "李明|是|北京大学|的|教授|，|他|研究|人工智能|已经|二十|年|了|。",
    "长江|是|中国|最长|的|河流|，|它|流经|青海|、|西藏|、|四川|、|湖北|和|上海|等|地|。",
    "管理|部门|开始|限制|每天|的|游客|数量|。",
    "公司|决定|投入|更多|资金|研究|新|技术|。",
]


def _spans(words: list[str]) -> set[tuple[int, int]]:
    spans, pos = set(), 0
    for word in words:
        spans.add((pos, pos + len(word)))
        pos += len(word)
    return spans


def test_sentences_end_at_chinese_terminators_and_keep_their_closing_quotes():
    text = "他说：“你好。”我们走吧！真的吗？……好的；明天见"
    sentences = [text[a:b] for a, b in chinese_sentence_spans(text, 0, len(text))]
    assert sentences == ["他说：“你好。”", "我们走吧！", "真的吗？……", "好的；", "明天见"]
    doc = RegexAnnotator(language="zh").annotate_one(RawDocument("d", "", text + "\n第二行"))
    assert doc.num_sentences == 6  # a line break ends a sentence too
    # --annotator none on Chinese: every Han character is a word (character-level masking).
    assert all(len(w) == 1 for w in doc.words() if HAN.match(w))


@pytest.mark.parametrize(
    ("text", "expected", "named"),
    [
        ("The river flows through the valley and the farmers grow wheat on its banks.", "en", ""),
        ("长江是中国最长的河流，它流经青海、西藏和上海。这里有两个任务DP和NER。", "zh", ""),
        ("私は学生です。東京に住んでいます。", None, "Japanese"),
        ("Le chat est sur la table et les enfants jouent dans le jardin.", None, "Latin-script"),
        ("Привет мир, как у тебя дела сегодня?", None, "Cyrillic"),
    ],
)
def test_language_detection_names_what_it_cannot_read(text, expected, named):
    language, _ = detect_language(text)
    assert language == expected
    if expected is None:
        with pytest.raises(ValueError, match=named) as error:
            resolve_language("auto", [text], "input.jsonl")
        assert "--language zh" in str(error.value) and "--annotator none" in str(error.value)
    else:
        assert resolve_language("auto", [text]) == expected


def test_auto_never_runs_the_english_pipeline_on_chinese(chinese_jsonl, tmp_path, monkeypatch):
    import ernie_style.corpus.spacy_annotator as spacy_annotator

    def refuse(*args, **kwargs):
        raise AssertionError("the English pipeline ran on Chinese text")

    monkeypatch.setattr(spacy_annotator.SpacyAnnotator, "__init__", refuse)
    lines: list[str] = []
    summary = prepare_corpus([chinese_jsonl], tmp_path / "auto", PrepareConfig(), lines.append)
    assert (summary["language"], summary["annotator"]) == ("zh", "lac")
    assert corpus_language(tmp_path / "auto") == "zh"
    assert any("language: zh" in line for line in lines)
    with pytest.raises(ValueError, match="--annotator spacy reads en text, not --language zh"):
        prepare_corpus([chinese_jsonl], tmp_path / "forced", PrepareConfig(annotator="spacy"))
    french = tmp_path / "fr.jsonl"
    french.write_text(json.dumps({"id": "a", "text": "Le chat est sur la table."}) + "\n")
    with pytest.raises(ValueError, match="Latin-script language other than English"):
        prepare_corpus([french], tmp_path / "fr", PrepareConfig())
    # Any language can still be prepared without a pipeline, and says what it is.
    other = prepare_corpus([french], tmp_path / "fr", PrepareConfig(annotator="none"))
    assert other["language"] == "other"


@pytest.mark.parametrize("kind", ["lac", "jieba"])
def test_segmenters_give_words_entities_and_phrases(kind):
    from ernie_style.corpus.chinese import make_chinese_annotator

    annotator = make_chinese_annotator(kind)
    docs = annotator.annotate([RawDocument(f"a{i}", "", t) for i, t in enumerate(CHINESE_ARTICLES)])
    entities = set()
    for doc in docs:
        doc.validate()
        starts, ends = doc.word_starts, doc.word_ends
        for a, b, label in zip(doc.entity_starts, doc.entity_ends, doc.entity_labels, strict=True):
            entities.add((doc.text[starts[a] : ends[b - 1]], label))
        assert doc.phrase_starts  # noun phrases of two or more words
        assert all(b - a >= 2 for a, b in zip(doc.phrase_starts, doc.phrase_ends, strict=True))
    assert {("北京", "LOC"), ("上海", "LOC")} <= entities
    assert any(label == "PER" for _, label in entities)
    assert any(label == "ORG" for _, label in entities)
    # Word boundaries agree with a hand segmentation: a segmenter that made every character a
    # word (F1 ~0.4 here) or whole clauses words fails this.
    gold = [line.split("|") for line in GOLD_SEGMENTATION]
    tagged = annotator.tag(["".join(words) for words in gold])
    found = [_spans([w for w, _ in sentence]) for sentence in tagged]
    expected = [_spans(words) for words in gold]
    hits = sum(len(f & e) for f, e in zip(found, expected, strict=True))
    precision = hits / sum(map(len, found))
    recall = hits / sum(map(len, expected))
    assert 2 * precision * recall / (precision + recall) >= 0.75


def _bert_chinese_vocab(corpus_dir, folder):
    """An existing BERT-Chinese-style tokenizer: a `vocab.txt` of special tokens, ASCII and the
    corpus's characters, loaded by `BertTokenizerFast` (as bert-base-chinese ships)."""
    from transformers import BertTokenizerFast

    chars = sorted({c for row in load_corpus(corpus_dir) for c in row["text"] if not c.isspace()})
    ascii_chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    folder.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *ascii_chars, *chars]
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n", encoding="utf-8")
    BertTokenizerFast.from_pretrained(str(folder)).save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize("vocabulary", ["trained", "bert_chinese_vocab_txt"])
def test_the_vocabulary_is_one_token_per_character_and_masking_keeps_words_whole(
    chinese_corpus, tmp_path, vocabulary
):
    folder = chinese_corpus / "tokenizer"
    if vocabulary != "trained":  # data.tokenizer pointing at an existing Chinese vocabulary
        folder = _bert_chinese_vocab(chinese_corpus, tmp_path / "bert_chinese")
    tokenizer = load_tokenizer(folder)
    vocab = tokenizer.get_vocab()
    assert all(chr(c) in vocab for c in range(ord("a"), ord("z") + 1))  # ASCII always covered
    han_tokens = [t for t in vocab if HAN.search(t)]
    assert han_tokens and all(len(t) == 1 for t in han_tokens)
    documents = list(load_corpus(chinese_corpus))
    task = KnowledgeMasking(tokenizer, max_seq_len=128, language="zh")
    multi_char_masked = 0
    for level in ("basic", "phrase", "entity"):
        for seed, row in enumerate(documents):
            document = TokenizedDocument(Document.from_row(row), tokenizer)
            rng = np.random.default_rng(seed)
            n = document.doc.num_words
            _, labels = task.mask_window(document, 0, n, level, rng, max_tokens=10_000)
            scored = labels != IGNORE_INDEX
            offsets = document.word_offsets
            for w in range(n):
                word_scored = scored[offsets[w] : offsets[w + 1]]
                # Every character of a segmenter word is masked, or none is.
                assert word_scored.all() or not word_scored.any(), document.doc.word(w)
                multi_char_masked += bool(word_scored.all() and len(word_scored) > 1)
    assert multi_char_masked > 20
