"""Chinese fixtures: hand-written paragraphs (this project's own text) and a prepared corpus."""

from __future__ import annotations

import json

import pytest

#: Short articles written for these tests: connectives open sentences (但是, 因此, 此外, ...),
#: persons, places and organisations recur, and quotes close sentences.
CHINESE_ARTICLES = [
    "李明是北京大学的教授，他研究人工智能已经二十年了。他说：“机器翻译的进步让我十分惊讶。”"
    "但是，他也认为语言模型还有很多问题。\n\n"
    "去年，李明带领团队访问了上海交通大学。因此，两所学校决定共同建立一个新的实验室。"
    "此外，他们还计划每年举办一次学术会议。",
    "长江是中国最长的河流，全长六千三百多公里。它流经青海、西藏、四川、湖北和上海等地。"
    "然而，长江流域的环境保护面临巨大压力。\n\n"
    "例如，一些工厂把污水直接排入河中。所以，国务院在二〇一六年发布了新的保护规划。"
    "同时，沿江城市也加强了对企业的监督。",
    "张华在深圳一家科技公司工作。她每天早上八点到公司，晚上很晚才回家。"
    "虽然工作很辛苦，她仍然觉得很有意义。\n\n"
    "她的公司主要开发手机应用程序。不过，最近市场竞争越来越激烈。"
    "因此，公司决定投入更多资金研究新技术。另外，公司还招聘了一批年轻的工程师。",
    "中国科学院昨天在北京召开新闻发布会，介绍了最新的科研成果。王强研究员说，"
    "他们在量子通信领域取得了重要突破。\n\n"
    "而且，这项技术很快就能应用到金融和电力行业。但是，要大规模推广还需要时间。"
    "此外，国际合作也非常重要。",
    "杭州西湖是著名的旅游景点，每年吸引数百万游客。春天的时候，湖边开满了桃花。"
    "因为风景优美，很多诗人曾在这里写下名篇。\n\n"
    "然而，游客太多也给景区带来了压力。于是，管理部门开始限制每天的游客数量。"
    "例如，节假日需要提前在网上预约。",
]


@pytest.fixture(scope="session")
def chinese_jsonl(tmp_path_factory):
    """The articles above as a JSONL input file for `prepare` (each twice, with distinct ids,
    so the corpus has enough documents for a tokenizer and a held-out split)."""
    path = tmp_path_factory.mktemp("zh_input") / "articles.jsonl"
    rows = [
        {"id": f"zh{copy}-{i}", "title": "", "text": text}
        for copy in range(2)
        for i, text in enumerate(CHINESE_ARTICLES)
    ]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", "utf-8")
    return path


@pytest.fixture(scope="session")
def chinese_corpus(chinese_jsonl, tmp_path_factory):
    """The articles prepared with `--language auto` (LAC) and a Chinese WordPiece vocabulary."""
    from ernie_style.corpus.prepare import PrepareConfig, prepare_corpus

    output = tmp_path_factory.mktemp("zh_corpus") / "corpus"
    config = PrepareConfig(tokenizer_vocab_size=600, tokenizer_min_frequency=1)
    prepare_corpus([chinese_jsonl], output, config, echo=lambda line: None)
    return output


@pytest.fixture(scope="session")
def chinese_news():
    """(documents, tokenizer): 600 documents of real news text, each two paragraphs of four
    sentences taken in order from the shipped MSRA-NER training set, with jieba's words; and a
    character vocabulary trained on them."""
    from ernie_style.corpus.annotate import RawDocument
    from ernie_style.corpus.chinese import JiebaAnnotator
    from ernie_style.testing import ROOT
    from ernie_style.tokenizer import train_wordpiece

    path = ROOT / "data" / "suites" / "cpu_zh" / "msra_ner" / "train.jsonl"
    with path.open(encoding="utf-8") as handle:
        sentences = ["".join(json.loads(line)["tokens"]) for line in handle]
    sentences = [s for s in sentences if s.endswith(("。", "！", "？"))]
    raw = [
        RawDocument(
            id=f"news-{d}",
            title="",
            text="".join(sentences[8 * d : 8 * d + 4])
            + "\n\n"
            + "".join(sentences[8 * d + 4 : 8 * d + 8]),
        )
        for d in range(600)
    ]
    documents = JiebaAnnotator().annotate(raw)
    tokenizer = train_wordpiece([d.text for d in documents], vocab_size=3000, min_frequency=1)
    return documents, tokenizer
