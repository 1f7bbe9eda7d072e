"""Indexes are built by a CPU job, not by training (issue 28): `prepare` builds them for the
corpus tokenizer, `ernie-style index` for another one; a run finds them built, builds a missing
one itself only for a small corpus (one line naming the command) and refuses a large one."""

from __future__ import annotations

import pytest

from ernie_style.cli import main
from ernie_style.corpus.index import index_root, tokenizer_key
from ernie_style.corpus.parted import is_built
from ernie_style.pretrain.examples import CorpusContext


def test_prepare_builds_what_a_run_reads_so_the_run_builds_nothing(small_corpus, tmp_path, capsys):
    from ernie_style.config import load_config
    from ernie_style.pretrain.config import PretrainConfig
    from ernie_style.pretrain.state import build_run_state
    from ernie_style.testing.pretrain import write_config
    from ernie_style.tokenizer import load_tokenizer

    root = index_root(small_corpus)  # other tests' runs may add their own indexes here
    key = tokenizer_key(load_tokenizer(small_corpus / "tokenizer"))
    for name in (
        f"tokens-{key}-docs0-12",
        f"tokens-{key}-docs12-20",
        "ir_relevance-bm25-p3-docs0-12",
        "token_document_relation-word-counts-docs0-12",
    ):
        assert is_built(root, name), name  # built by `prepare` (8 held-out documents)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    tasks = {
        "knowledge_masking": {"budget": 4},
        "ir_relevance": {"budget": 4},
        "token_document_relation": {"budget": 4},
    }
    path = write_config(
        tmp_path / "run.yaml", small_corpus, tmp_path / "run", tasks=tasks,
        data__heldout_documents=8,
    )  # fmt: skip
    capsys.readouterr()
    state = build_run_state(load_config(PretrainConfig, path))
    assert "building index" not in capsys.readouterr().out
    after = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    assert {p: t for p, t in after.items() if p in before} == before  # mapped, not rebuilt
    assert state.train_corpus.token_table() is not None


def test_the_index_command_builds_another_tokenizers_indexes(
    small_corpus, wiki_tokenizer, tmp_path, capsys
):
    tokenizer = tmp_path / "tokenizer"
    wiki_tokenizer.save_pretrained(str(tokenizer))
    index_dir = tmp_path / "indexes"
    args = ["index", "--corpus", str(small_corpus), "--tokenizer", str(tokenizer)]
    args += ["--index-dir", str(index_dir), "--heldout-documents", "3", "--num-proc", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "4 of 4 indexes complete" in out
    root = index_root(small_corpus, index_dir)
    key = tokenizer_key(wiki_tokenizer)
    assert is_built(root, f"tokens-{key}-docs0-17") and is_built(root, f"tokens-{key}-docs17-20")
    assert is_built(root, "ir_relevance-bm25-p3-docs0-17")
    assert is_built(root, "token_document_relation-word-counts-docs0-17")
    assert main(args) == 0  # a rerun finds them complete and builds nothing
    with pytest.raises(SystemExit):
        main(["index", "--corpus", str(small_corpus), "--shard", "2/2"])
    assert main(["index", "--corpus", str(small_corpus), "--num-proc", "0"]) == 2
    assert "--num-proc must be >= 1" in capsys.readouterr().err


def test_a_run_builds_a_small_missing_index_in_one_line_and_refuses_a_large_one(
    wiki_documents, wiki_tokenizer, tmp_path, capsys
):
    context = CorpusContext(wiki_documents[:30], wiki_tokenizer, index_root=tmp_path / "root")
    context.index_command = "ernie-style index --corpus C --tokenizer T"
    context.auto_build_documents = 29  # a "large" corpus: one document over the limit
    with pytest.raises(
        ValueError,
        match=r"missing: build it before training with `ernie-style index --corpus C --tok",
    ):
        context.token_table()
    assert not list((tmp_path / "root").glob("tokens-*"))
    context.auto_build_documents = 30
    table = context.token_table()
    lines = [line for line in capsys.readouterr().out.splitlines() if "index" in line]
    assert len(lines) == 1 and "`ernie-style index --corpus C --tokenizer T`" in lines[0]
    assert len(table) == 30
    again = CorpusContext(wiki_documents[:30], wiki_tokenizer, index_root=tmp_path / "root")
    again.auto_build_documents = 0  # built: a run maps it whatever the corpus size
    assert len(again.token_table()) == 30
    assert "building" not in capsys.readouterr().out
