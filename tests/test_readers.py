"""Input readers: formats, ids, titles, structure, bad input counting, fingerprints, hub errors."""

from __future__ import annotations

import json
import logging
from collections import Counter

import datasets
import pytest

from ernie_style.corpus import readers
from ernie_style.corpus.readers import (
    FieldNames,
    fingerprint_sources,
    open_sources,
    read_documents,
)


def read_all(*paths, fields=None, split="train"):
    stats = Counter()
    docs = list(read_documents(open_sources(list(paths), fields, split), stats))
    return docs, stats


def test_text_file_documents_are_blank_line_blocks_of_lines(tmp_path):
    path = tmp_path / "books.txt"
    path.write_bytes(
        b"\xef\xbb\xbfFirst sentence here.\r\nSecond line of doc one.\r\n\r\n\r\n"
        b"Only line of doc two.\n  \t \nDoc three.\nStill three.\n"
    )
    docs, stats = read_all(path)
    assert [d.id for d in docs] == ["books-0", "books-1", "books-2"]
    assert [d.title for d in docs] == ["", "", ""]
    assert docs[0].text == "First sentence here.\nSecond line of doc one."
    assert docs[1].text == "Only line of doc two."
    assert docs[2].text == "Doc three.\nStill three."
    assert stats == Counter(documents_read=3)


def test_jsonl_fields_ids_titles_and_configurable_names(tmp_path):
    path = tmp_path / "wiki.jsonl"
    rows = [
        {"id": "a1", "title": "Alpha", "text": "Para one.\n\nPara two."},
        {"title": "Beta", "text": "No id here."},
        {"id": 7, "text": "Numeric id, no title."},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    docs, stats = read_all(path)
    assert [(d.id, d.title) for d in docs] == [("a1", "Alpha"), ("wiki-1", "Beta"), ("7", "")]
    assert docs[0].text == "Para one.\n\nPara two."
    assert stats["documents_read"] == 3

    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"key": "k", "head": "H", "body": "Body text."}) + "\n")
    docs, _ = read_all(other, fields=FieldNames(text="body", title="head", id="key"))
    assert [(d.id, d.title, d.text) for d in docs] == [("k", "H", "Body text.")]


def test_jsonl_bad_lines_are_warned_counted_and_skipped(tmp_path, caplog):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(
        b'{"text": "Good one."}\n'
        b"{not json\n"
        b"[1, 2]\n"
        b'{"title": "no text"}\n'
        b'{"text": 5}\n'
        b'{"text": "   \\n\\t "}\n'
        b'{"text": "bad \xff\xfe bytes."}\n'
        b'{"text": "lone \\ud800 surrogate."}\n'
    )
    with caplog.at_level(logging.WARNING, logger="ernie_style.corpus.readers"):
        docs, stats = read_all(path)
    assert [d.text for d in docs] == [
        "Good one.",
        "bad \ufffd\ufffd bytes.",
        "lone \ufffd surrogate.",
    ]
    assert [d.id for d in docs] == ["bad-0", "bad-6", "bad-7"]
    assert stats == Counter(
        documents_read=8,
        skipped_invalid_json=2,
        skipped_missing_text=2,
        skipped_empty=1,
        non_utf8_documents=2,
    )
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"{path}:2: invalid JSON" in m for m in messages)
    assert any(f"{path}:3: not a JSON object" in m for m in messages)
    assert any(f"{path}:4: text field 'text' missing" in m for m in messages)
    assert any(f"{path}:5: text field 'text' not a string (int)" in m for m in messages)


def test_folder_of_txt_files_keeps_paragraphs_and_uses_stems(tmp_path):
    folder = tmp_path / "articles"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text("Beta para one.\n\n\nBeta para two.\n", encoding="utf-8")
    (folder / "a.txt").write_text("Alpha.", encoding="utf-8")
    (folder / "sub" / "c.txt").write_text("Gamma.", encoding="utf-8")
    (folder / "empty.txt").write_text(" \n", encoding="utf-8")
    (folder / "notes.md").write_text("ignored", encoding="utf-8")
    docs, stats = read_all(folder)
    assert [(d.id, d.title) for d in docs] == [("a", "a"), ("b", "b"), ("c", "c")]
    assert docs[1].text == "Beta para one.\n\n\nBeta para two.\n"
    assert stats == Counter(documents_read=4, skipped_empty=1, empty_files=1)


def test_saved_dataset_and_dataset_dict(tmp_path):
    data = {"text": ["One.", None, "Three."], "title": ["T1", "T2", None], "id": ["x", "y", None]}
    datasets.Dataset.from_dict(data).save_to_disk(str(tmp_path / "saved"))
    docs, stats = read_all(tmp_path / "saved")
    assert [(d.id, d.title, d.text) for d in docs] == [
        ("x", "T1", "One."),
        ("saved-2", "", "Three."),
    ]
    assert stats == Counter(documents_read=3, skipped_missing_text=1)

    dd = datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"body": ["Train doc."]}),
        test=datasets.Dataset.from_dict({"body": ["Test doc."]}),
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    docs, _ = read_all(tmp_path / "dd", fields=FieldNames(text="body"), split="test")
    assert [(d.id, d.text) for d in docs] == [("dd-0", "Test doc.")]
    with pytest.raises(ValueError, match="no split 'dev'"):
        open_sources([tmp_path / "dd"], split="dev")
    with pytest.raises(ValueError, match="no text column 'text'"):
        open_sources([tmp_path / "dd"])


def test_duplicate_ids_are_renamed_uniquely(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"id": "d", "text": "One."}\n{"id": "d", "text": "Two."}\n')
    b.write_text('{"id": "d-dup1", "text": "Three."}\n{"id": "d", "text": "Four."}\n')
    docs, stats = read_all(a, b)
    assert [d.id for d in docs] == ["d", "d-dup1", "d-dup1-dup1", "d-dup2"]
    assert stats["duplicate_ids_renamed"] == 3


def test_empty_files_are_counted(tmp_path):
    (tmp_path / "e.txt").write_bytes(b"")
    (tmp_path / "e.jsonl").write_bytes(b"\n \n")
    docs, stats = read_all(tmp_path / "e.txt", tmp_path / "e.jsonl")
    assert docs == []
    assert stats == Counter(empty_files=2)


def test_missing_paths_raise_file_not_found(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"missing\.txt does not exist"):
        open_sources([tmp_path / "missing.txt"])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    with pytest.raises(FileNotFoundError, match="data/nothing does not exist"):
        open_sources(["data/nothing"])


def test_hub_name_offline_gives_one_clear_error(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="cannot load hub dataset 'someorg/somecorpus'") as info:
        open_sources(["someorg/somecorpus"])
    assert "\n" not in str(info.value)


def test_hub_unreachable_fails_fast_without_retries(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(readers, "_hub_reachable", lambda timeout=5.0: False)

    def never(*args, **kwargs):
        raise AssertionError("load_dataset must not be called when the hub is unreachable")

    monkeypatch.setattr(datasets, "load_dataset", never)
    with pytest.raises(ValueError, match="'wikitext': the hub is unreachable"):
        open_sources(["wikitext"])


def test_fingerprint_follows_bytes_and_names(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("Some text.\n")
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "x.txt").write_text("X.")
    first = fingerprint_sources(open_sources([path, folder]))
    assert first == fingerprint_sources(open_sources([path, folder]))
    path.write_text("Some text!\n")
    second = fingerprint_sources(open_sources([path, folder]))
    (folder / "x.txt").rename(folder / "y.txt")
    third = fingerprint_sources(open_sources([path, folder]))
    assert len({first, second, third}) == 3
