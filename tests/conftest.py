"""Shared fixtures: a small WordPiece tokenizer, hand-written English documents, the bundled
Wikipedia sample as documents."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# MKL's results depend on the memory alignment of its inputs on some CPUs (seen on an AMD EPYC:
# one Linear over a weight at another offset, e.g. mapped from a safetensors file, rounds
# otherwise). Strict conditional numerical reproducibility makes a result depend on the values
# alone, so two models with the same weights in one test agree bit for bit. MKL reads this on
# its first call, so setting it here, before any test computes, covers the test process; child
# runs inherit it. It is part of the kernel fingerprint (ernie_style.testing.machine).
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
# Under pytest-xdist (`-n auto`: one worker per core) each worker's torch gets its share of the
# cores instead of one thread per core in every worker, which oversubscribes the machine; set
# before any test imports torch. Child runs get one thread anyway (ernie_style.testing.CHILD_ENV).
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `slow` (minutes each) start first, shared out among the workers, so that the
    long runs overlap the short tests instead of one running alone at the end. pytest-xdist's
    `worksteal` hands worker k the k-th contiguous block of the collection, so the order is: for
    each worker, its share of the slow tests, then its share of the rest. Runs after
    pytest-randomly's shuffle and keeps its order within each group; every worker computes the
    same order, as xdist requires."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    rest = [item for item in items if item.get_closest_marker("slow") is None]
    ordered: list[pytest.Item] = []
    for k in range(workers):
        ordered += (
            slow[k::workers] + rest[k * len(rest) // workers : (k + 1) * len(rest) // workers]
        )
    items[:] = ordered


ENGLISH_PARAGRAPHS = [
    "Albert Einstein was born in Ulm in 1879. He developed the theory of relativity. "
    "However, he also contributed to quantum mechanics. His work changed modern physics.",
    "The city of New York has more than eight million people. It is the largest city in the "
    "United States. For example, Brooklyn alone has over two million residents. "
    "Meanwhile, the suburbs keep growing.",
    "Marie Curie studied radioactivity in Paris. She won the Nobel Prize twice. "
    "As a result, she became famous across Europe. Because of her research, new treatments "
    "were found.",
    "The river flows through the old valley. Farmers grow wheat and barley on its banks. "
    "Therefore, the region is known for bread. In addition, the valley attracts tourists.",
    "Python is a programming language created by Guido van Rossum. It is popular for data "
    "science. Instead of braces, it uses indentation. Thus, code tends to look clean.",
]


@pytest.fixture(scope="session")
def english_texts() -> list[str]:
    """A few paragraphs of plain English used to train test tokenizers."""
    return ENGLISH_PARAGRAPHS


@pytest.fixture(scope="session")
def tokenizer(english_texts):
    """An uncased WordPiece tokenizer trained on the English paragraphs (vocab ~ 400)."""
    from ernie_style.tokenizer import train_wordpiece

    return train_wordpiece(english_texts * 4, vocab_size=400, min_frequency=1)


@pytest.fixture(scope="session")
def english_documents():
    """Regex-annotated documents: each paragraph pair above forms one two-paragraph document."""
    from ernie_style.corpus.annotate import RawDocument, RegexAnnotator

    raws = [
        RawDocument(
            id=f"doc{i}",
            title=f"Title {i}",
            text=ENGLISH_PARAGRAPHS[i] + "\n\n" + ENGLISH_PARAGRAPHS[(i + 1) % 5],
        )
        for i in range(5)
    ]
    return RegexAnnotator().annotate(raws)


@pytest.fixture(scope="session")
def wiki_documents():
    """The bundled Wikipedia sample (100 articles), regex-annotated, titles left out."""
    import json
    from pathlib import Path

    from ernie_style.corpus.annotate import RawDocument, RegexAnnotator

    sample = Path(__file__).resolve().parents[1] / "data" / "sample_corpus" / "wiki_sample.jsonl"
    rows = [json.loads(line) for line in sample.read_text(encoding="utf-8").splitlines()]
    annotator = RegexAnnotator()
    return [
        annotator.annotate_one(RawDocument(id=row["id"], title="", text=row["text"]))
        for row in rows
    ]


@pytest.fixture(scope="session")
def wiki_tokenizer(wiki_documents):
    """An uncased 4000-token WordPiece tokenizer trained on the first 40 sample articles."""
    from ernie_style.tokenizer import train_wordpiece

    return train_wordpiece([doc.text for doc in wiki_documents[:40]], vocab_size=4000)


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory):
    """A small prepared corpus (20 sample articles, regex-annotated, 1500-token vocabulary)."""
    from ernie_style.testing.pretrain import make_small_corpus

    return make_small_corpus(tmp_path_factory.mktemp("corpus"))
