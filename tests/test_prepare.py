"""`ernie-style prepare` end to end: bad input, summary, caching, crash safety, parallelism,
tokenizer, output directory rules and `load_corpus`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import datasets
import pytest

from ernie_style.cli import main
from ernie_style.corpus import prepare
from ernie_style.corpus.annotate import normalize_text
from ernie_style.corpus.document import DOCUMENT_FEATURES, Document
from ernie_style.corpus.prepare import PrepareConfig, prepare_corpus
from ernie_style.corpus.prepared import load_corpus

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample_corpus" / "wiki_sample.jsonl"
FAST = PrepareConfig(annotator="none")


def quiet(_line: str) -> None:
    """An `echo` that prints nothing."""


def write_corpus(folder: Path, n: int = 6) -> Path:
    path = folder / "docs.jsonl"
    rows = [
        {"id": f"d{i}", "title": f"T{i}", "text": f"Doc {i} talks. It has words.\n\nMore {i}."}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def temp_dirs(output: Path) -> list[Path]:
    return sorted(output.parent.glob(f".{output.name}.prepare-*"))


def test_bad_inputs_are_counted_and_nothing_is_lost(tmp_path, capsys, caplog):
    inputs = tmp_path / "in"
    (inputs / "folder").mkdir(parents=True)
    (inputs / "empty.txt").write_bytes(b"")
    (inputs / "blank.jsonl").write_bytes(b"\n  \n")
    (inputs / "lines.txt").write_bytes(
        b"Doc one line one.\nLine two.\n\n \t \n\nSecond doc. It has two sentences.\n"
    )
    (inputs / "bad.jsonl").write_bytes(
        b'{"id": "dup", "text": "First good doc. Two sentences."}\n'
        b"{not json\n"
        b'{"title": "no text"}\n'
        b'{"text": ""}\n'
        b'{"text": " \\n\\t "}\n'
        b'{"id": "dup", "text": "Bytes \xff\xfe here. Second sentence."}\n'
        b'{"text": "one sentence only"}\n'
    )
    long_text = "Lorem ipsum dolor sit amet, consectetur. " * 122_000  # ~5 MB, one line
    (inputs / "long.txt").write_text(long_text, encoding="utf-8")
    (inputs / "folder" / "a.txt").write_text("Para one.\n\nPara two. Yes.", encoding="utf-8")
    (inputs / "folder" / "b.txt").write_text("   ", encoding="utf-8")
    output = tmp_path / "out"
    argv = ["prepare", "--annotator", "none", "--no-progress", "--output", str(output), "--input"]
    names = ["empty.txt", "blank.jsonl", "lines.txt", "bad.jsonl", "long.txt", "folder"]
    with caplog.at_level(logging.WARNING):
        code = main([*argv, *(str(inputs / name) for name in names)])
    assert code == 0
    summary = json.loads((output / "prepare_summary.json").read_text())
    assert summary["documents_read"] == 12
    assert summary["documents_kept"] == 7
    assert summary["skipped"] == {
        "empty": 3,
        "invalid_json": 1,
        "missing_text": 1,
        "no_words": 0,
        "invalid_annotation": 0,
    }
    expected = {
        "empty_files": 3,
        "non_utf8_documents": 1,
        "long_documents_split": 1,
        "duplicate_ids_renamed": 1,
        "short_documents": 1,  # "one sentence only"
    }
    assert {k: summary[k] for k in expected} == expected
    printed = capsys.readouterr().out
    assert "documents read: 12" in printed and "skipped (invalid_json): 1" in printed
    assert "short (token tasks only): 1" in printed
    warnings = " ".join(r.getMessage() for r in caplog.records)
    assert f"{inputs / 'bad.jsonl'}:2: invalid JSON" in warnings
    assert "phrase/entity masking will fall back to word masking" in warnings

    dataset = load_corpus(output)
    assert dataset["id"] == ["lines-0", "lines-1", "dup", "dup-dup1", "bad-6", "long-0", "a"]
    rows = {row["id"]: row for row in dataset}
    assert rows["dup-dup1"]["text"].startswith("Bytes \ufffd\ufffd here.")
    big = Document.from_row(rows["long-0"])
    big.validate()
    assert big.text == normalize_text(long_text)
    assert "".join(big.words()) == long_text.replace(" ", "")


def test_summary_counts_match_the_dataset(tmp_path):
    summary = prepare_corpus([write_corpus(tmp_path)], tmp_path / "out", FAST, echo=quiet)
    dataset = load_corpus(tmp_path / "out")
    assert summary["documents_kept"] == dataset.num_rows == 6
    assert summary["sentences"] == sum(len(s) for s in dataset["sentence_starts"]) == 18
    assert summary["words"] == sum(len(w) for w in dataset["word_starts"])
    assert dataset["title"] == [f"T{i}" for i in range(6)]
    assert all(Document.from_row(row).validate() is None for row in dataset)


def test_cache_reuse_and_rebuild(tmp_path, monkeypatch):
    source = write_corpus(tmp_path)
    output = tmp_path / "out"
    lines: list[str] = []
    first = prepare_corpus([source], output, FAST, echo=quiet)
    assert first["reused"] is False
    arrow = next((output / "documents").glob("*.arrow"))
    stamp = arrow.stat().st_mtime_ns

    def no_work(*args, **kwargs):
        raise AssertionError("a cached run must not annotate")

    monkeypatch.setattr(prepare, "make_annotator", no_work)
    second = prepare_corpus([source], output, FAST, echo=lines.append)
    assert second["reused"] is True and "reusing it" in lines[-1]
    assert {k: v for k, v in second.items() if k != "reused"} == {
        k: v for k, v in first.items() if k != "reused"
    }
    assert arrow.stat().st_mtime_ns == stamp
    monkeypatch.undo()

    data = bytearray(source.read_bytes())
    data[data.index(b"talks")] = ord("w")  # one byte: "talks" -> "walks"
    source.write_bytes(bytes(data))
    third = prepare_corpus([source], output, FAST, echo=quiet)
    assert third["reused"] is False
    assert load_corpus(output)[0]["text"].startswith("Doc 0 walks.")
    fourth = prepare_corpus([source], output, PrepareConfig(annotator="none", max_documents=2))
    assert fourth["reused"] is False and fourth["documents_kept"] == 2
    assert temp_dirs(output) == []


def test_failure_while_writing_leaves_previous_version(tmp_path, monkeypatch):
    source = write_corpus(tmp_path)
    output = tmp_path / "out"
    fresh = tmp_path / "fresh"

    def broken_save(self, path, *args, **kwargs):
        Path(path).mkdir(parents=True)
        (Path(path) / "data-00000-of-00001.arrow").write_bytes(b"half")
        raise OSError("disk full")

    prepare_corpus([source], output, FAST, echo=quiet)
    before = json.loads((output / "fingerprint.json").read_text())
    source.write_text(source.read_text().replace("talks", "walks"))
    monkeypatch.setattr(datasets.Dataset, "save_to_disk", broken_save)
    for target in (output, fresh):
        with pytest.raises(OSError, match="disk full"):
            prepare_corpus([source], target, FAST, echo=quiet)
        assert temp_dirs(target) == []
    assert not fresh.exists()
    assert json.loads((output / "fingerprint.json").read_text()) == before
    assert load_corpus(output)[0]["text"].startswith("Doc 0 talks.")


_KILLED_RUN = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from ernie_style.corpus import prepare

    original = prepare.annotate_chunk
    calls = []

    def slow(annotator, chunk):
        calls.append(1)
        if len(calls) == 2:  # the first chunk is already in the staging file
            Path(sys.argv[3]).write_text("ready")
            time.sleep(120)
        return original(annotator, chunk)

    prepare.annotate_chunk = slow
    config = prepare.PrepareConfig(annotator="none", chunk_chars=10)
    prepare.prepare_corpus([sys.argv[1]], sys.argv[2], config)
    """
)


@pytest.mark.parametrize("previous", [False, True])
def test_sigkill_mid_run_leaves_no_partial_output(tmp_path, previous):
    source = write_corpus(tmp_path)
    output = tmp_path / "out"
    if previous:
        prepare_corpus([source], output, FAST, echo=quiet)
        source.write_text(source.read_text().replace("talks", "walks"))
        before = (output / "fingerprint.json").read_text()
    marker = tmp_path / "ready"
    script = tmp_path / "killed_run.py"
    script.write_text(_KILLED_RUN)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, str(script), str(source), str(output), str(marker)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), child.stderr.read().decode() if child.poll() is not None else ""
    child.send_signal(signal.SIGKILL)
    child.wait()
    stale = temp_dirs(output)
    assert len(stale) == 1 and (stale[0] / "staging.arrow").exists()
    if previous:
        assert (output / "fingerprint.json").read_text() == before
        assert load_corpus(output)[0]["text"].startswith("Doc 0 talks.")
    else:
        assert not output.exists()
    summary = prepare_corpus([source], output, FAST, echo=quiet)
    assert summary["reused"] is False and temp_dirs(output) == []
    assert load_corpus(output)[0]["text"].startswith("Doc 0 walks." if previous else "Doc 0 talks.")


def test_output_directory_rules(tmp_path):
    source = write_corpus(tmp_path)
    user_dir = tmp_path / "mine"
    user_dir.mkdir()
    (user_dir / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="refusing to overwrite"):
        prepare_corpus([source], user_dir, FAST, echo=quiet)
    assert (user_dir / "thesis.tex").read_text() == "precious"
    assert (
        main(["prepare", "--annotator", "none", "--input", str(source), "--output", str(user_dir)])
        == 2
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prepare_corpus([source], empty, FAST, echo=quiet)["documents_kept"] == 6
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        prepare_corpus([source], a_file, FAST, echo=quiet)


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main(["prepare", "--input", str(tmp_path / "nope.txt"), "--output", out]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"ernie-style: error: input {tmp_path / 'nope.txt'} does not exist"
    assert (
        main(
            ["prepare", "--input", str(write_corpus(tmp_path)), "--output", out, "--num-proc", "0"]
        )
        == 2
    )
    assert "num_proc must be at least 1" in capsys.readouterr().err


def test_hub_dataset_offline_cli_message(tmp_path, capsys, monkeypatch):
    # conftest sets HF_HUB_OFFLINE=1 before `datasets` is imported; pin it in case it was not.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    argv = ["prepare", "--input", "someorg/nocorpus", "--output", str(tmp_path / "out")]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("ernie-style: error: cannot load hub dataset 'someorg/nocorpus'")
    assert not (tmp_path / "out").exists()


def test_train_tokenizer_reloads_with_token_type_ids(tmp_path):
    from ernie_style.tokenizer import load_tokenizer

    source = write_corpus(tmp_path, n=30)
    output = tmp_path / "out"
    argv = [
        "prepare",
        "--annotator",
        "none",
        "--no-progress",
        "--input",
        str(source),
        "--output",
        str(output),
        "--train-tokenizer",
        "120",
        "--tokenizer-min-frequency",
        "1",
    ]
    assert main(argv) == 0
    tokenizer = load_tokenizer(output / "tokenizer")
    pair = tokenizer("Doc talks.", "More words.")
    assert 0 in pair["token_type_ids"] and 1 in pair["token_type_ids"]
    assert pair["input_ids"][0] == tokenizer.cls_token_id
    assert "doc" in tokenizer.get_vocab() and "Doc" not in tokenizer.get_vocab()
    assert main([*argv, "--cased"]) == 0  # a tokenizer setting changes the fingerprint
    assert "Doc" in load_tokenizer(output / "tokenizer").get_vocab()
    assert json.loads((output / "fingerprint.json").read_text())["settings"]["tokenizer"]["cased"]


def test_load_corpus_checks_path_and_features(tmp_path):
    source = write_corpus(tmp_path)
    prepare_corpus([source], tmp_path / "out", FAST, echo=quiet)
    assert load_corpus(tmp_path / "out" / "documents").num_rows == 6
    assert load_corpus(tmp_path / "out").features == DOCUMENT_FEATURES
    with pytest.raises(FileNotFoundError, match="missing"):
        load_corpus(tmp_path / "missing")
    with pytest.raises(ValueError, match="is not a prepared corpus"):
        load_corpus(tmp_path)
    datasets.Dataset.from_dict({"text": ["x"]}).save_to_disk(str(tmp_path / "other"))
    with pytest.raises(ValueError, match=r"features differ.*missing \['entity_ends'"):
        load_corpus(tmp_path / "other")


def test_spacy_num_proc_2_matches_num_proc_1(tmp_path):
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()[:6]
    source = tmp_path / "sample.jsonl"
    source.write_text("\n".join(_trim(line) for line in lines) + "\n")
    results = []
    for num_proc in (1, 2):
        config = PrepareConfig(num_proc=num_proc, chunk_chars=2_000)
        output = tmp_path / f"out{num_proc}"
        summary = prepare_corpus([source], output, config, echo=quiet)
        results.append((summary, load_corpus(output)))
    (one, first), (two, second) = results
    assert first.num_rows == 6 and first.to_list() == second.to_list()
    assert one == two
    assert one["entities"] > 0 and one["phrases"] > 0
    for row in first:
        Document.from_row(row).validate()


def _trim(line: str, chars: int = 3_000) -> str:
    """A sample article cut to its first paragraphs, to keep the spaCy test fast."""
    row = json.loads(line)
    paragraphs, size = [], 0
    for paragraph in row["text"].split("\n\n"):
        if size > chars:
            break
        paragraphs.append(paragraph)
        size += len(paragraph)
    return json.dumps({**row, "text": "\n\n".join(paragraphs)})


def test_sample_corpus_is_shipped():
    rows = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()]
    assert 2_000_000 <= SAMPLE.stat().st_size <= 3_000_000
    assert len(rows) >= 50 and len({r["id"] for r in rows}) == len(rows)
    assert all(set(r) == {"id", "title", "text"} and r["title"] and r["text"] for r in rows)
    assert sum("\n\n" in r["text"] for r in rows) >= 0.9 * len(rows)
    assert not any("==" in r["text"] or "[[" in r["text"] or "{{" in r["text"] for r in rows)


@pytest.mark.parametrize("num_proc", [1, 2])
def test_missing_spacy_model_is_a_clean_error(tmp_path, num_proc):
    config = PrepareConfig(spacy_model="no_such_model_xx", num_proc=num_proc)
    with pytest.raises(ValueError, match="cannot load spaCy model 'no_such_model_xx'"):
        prepare_corpus([write_corpus(tmp_path)], tmp_path / "out", config, echo=quiet)
    assert not (tmp_path / "out").exists() and temp_dirs(tmp_path / "out") == []


def test_progress_bar_goes_to_stderr(tmp_path, capsys):
    config = PrepareConfig(annotator="none", progress=True)
    prepare_corpus([write_corpus(tmp_path)], tmp_path / "out", config, echo=quiet)
    captured = capsys.readouterr()
    assert "annotating" in captured.err and "6doc" in captured.err
    assert "annotating" not in captured.out
