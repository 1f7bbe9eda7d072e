"""`prepare --shard I/N` on several machines, then `merge-shards`: the same corpus as one run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ernie_style.cli import main
from ernie_style.corpus.merge_shards import merge_shards
from ernie_style.corpus.prepare import PrepareConfig, prepare_corpus
from ernie_style.corpus.prepared import load_corpus

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample_corpus" / "wiki_sample.jsonl"


def quiet(_line: str) -> None:
    """An `echo` that prints nothing."""


@pytest.fixture
def inputs(tmp_path):
    """22 articles plus rows the reader skips, renames or the annotator drops."""
    rows = SAMPLE.read_text(encoding="utf-8").splitlines()[:20]
    messy = tmp_path / "messy.jsonl"
    messy.write_bytes(
        b'{"id": "enwiki-12", "text": "A duplicate id. It gets renamed."}\n'
        b"{not json\n"
        b'{"title": "no text"}\n'
        b'{"text": " \\n\\t "}\n'
        b'{"id": "dots", "text": "... !!! ???"}\n'
        b'{"id": "one", "text": "one sentence only"}\n'
    )
    articles = tmp_path / "articles.jsonl"
    articles.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return [articles, messy]


def rows_of(path: Path) -> list[str]:
    return sorted(json.dumps(row, sort_keys=True) for row in load_corpus(path))


def test_merged_shards_equal_one_unsharded_prepare(inputs, tmp_path):
    config = PrepareConfig(annotator="none")
    whole = prepare_corpus(inputs, tmp_path / "whole", config, echo=quiet)
    shards = []
    for index in range(3):
        shard = PrepareConfig(annotator="none", shard=(index, 3))
        prepare_corpus(inputs, tmp_path / f"s{index}", shard, echo=quiet)
        shards.append(tmp_path / f"s{index}")
    sizes = [len(load_corpus(s)) for s in shards]
    assert all(sizes) and sum(sizes) == whole["documents_kept"]
    # Given in any order; the command line works like the API.
    code = main(
        ["merge-shards", "--input", *map(str, shards[::-1]), "--output", str(tmp_path / "m")]
    )
    assert code == 0
    assert rows_of(tmp_path / "m") == rows_of(tmp_path / "whole")
    merged = json.loads((tmp_path / "m" / "prepare_summary.json").read_text())
    for key in (
        "documents_read",
        "documents_kept",
        "skipped",
        "duplicate_ids_renamed",
        "short_documents",
        "characters",
        "sentences",
        "words",
    ):
        assert merged[key] == whole[key], key
    assert merged["skipped"]["invalid_json"] == 1 and merged["duplicate_ids_renamed"] == 1
    # A second merge of the same shards is a no-op; with a tokenizer it is a new corpus.
    assert merge_shards(shards, tmp_path / "m", echo=quiet)["reused"] is True
    tokenized = merge_shards(
        shards, tmp_path / "m", PrepareConfig(tokenizer_vocab_size=500), echo=quiet
    )
    assert tokenized["reused"] is False and (tmp_path / "m" / "tokenizer").is_dir()


def test_merge_refuses_incomplete_mixed_or_unsharded_inputs(inputs, tmp_path):
    def shard(index, count, source=inputs, name=None):
        out = tmp_path / (name or f"s{index}of{count}")
        config = PrepareConfig(annotator="none", shard=(index, count))
        prepare_corpus(source, out, config, echo=quiet)
        return out

    zero, one = shard(0, 2), shard(1, 2)
    with pytest.raises(ValueError, match=r"shard\(s\) \[1\] of 2 missing"):
        merge_shards([zero], tmp_path / "m", echo=quiet)
    with pytest.raises(ValueError, match="are both shard 0/2"):
        merge_shards([zero, zero, one], tmp_path / "m", echo=quiet)
    with pytest.raises(ValueError, match="is shard 0/3, but"):
        merge_shards([zero, one, shard(0, 3)], tmp_path / "m", echo=quiet)
    other = shard(1, 2, source=inputs[:1], name="other")
    with pytest.raises(ValueError, match=f"{other} was prepared from other inputs"):
        merge_shards([zero, other], tmp_path / "m", echo=quiet)
    prepare_corpus(inputs, tmp_path / "whole", PrepareConfig(annotator="none"), echo=quiet)
    with pytest.raises(ValueError, match="was not prepared with --shard"):
        merge_shards([zero, tmp_path / "whole"], tmp_path / "m", echo=quiet)
    assert not (tmp_path / "m").exists()
    with pytest.raises(ValueError, match="give it to `ernie-style merge-shards`"):
        PrepareConfig(shard=(0, 2), tokenizer_vocab_size=100).validate()
    usage = ["prepare", "--input", str(inputs[0]), "--output", str(tmp_path / "x")]
    with pytest.raises(SystemExit) as refused:
        main([*usage, "--shard", "2/2"])
    assert refused.value.code == 2
