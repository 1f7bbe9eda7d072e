"""Fuzzing bad input (hypothesis): the corpus readers, the config loader and the annotation-batch
reader either succeed or raise their documented clear error (a `ValueError` subclass whose
message names the file and line, or the config key), never a TypeError, KeyError, IndexError,
UnicodeDecodeError, RecursionError, ... And a failed `ingest` leaves every file as it was.

Bounded: each property runs a fixed number of examples (`FUZZ` below), no deadline, no
shrinking; the whole file takes about 25 s.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import string
import typing
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from ernie_style.active_learning.loop import ingest, read_batch
from ernie_style.active_learning.pool import TaskSpec, read_pool
from ernie_style.active_learning.simulate import SimulationConfig
from ernie_style.config import load_config
from ernie_style.corpus.readers import FieldNames, open_sources, read_documents
from ernie_style.finetune.config import FinetuneConfig
from ernie_style.finetune.readers import DataError
from ernie_style.pretrain.config import PretrainConfig

#: Examples per property; raise it for a longer hunt (`ERNIE_STYLE_FUZZ_EXAMPLES=5000`).
EXAMPLES = int(os.environ.get("ERNIE_STYLE_FUZZ_EXAMPLES", "120"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
    # No shrinking: it can take minutes on these inputs; the failing example is printed as is.
    phases=(Phase.explicit, Phase.generate),
)

# ---- building blocks ------------------------------------------------------------------------
#: Lines that broke (or could break) a reader: deep nesting, huge numbers, odd line breaks,
#: control characters, lone surrogates, invalid UTF-8, a BOM in the middle of the file.
#: JSON that `json.loads` refuses with RecursionError / a plain ValueError (not a syntax error).
DEEP_OR_HUGE: list[bytes] = [
    b"[" * 5000,
    b'{"text": ' * 3000,
    b"1" * 5000,
    b'{"text": "a", "id": ' + b"9" * 5000 + b"}",
]
NASTY_LINES: list[bytes] = [
    *DEEP_OR_HUGE,
    b"[" * 200 + b"]" * 200,
    b'{"text": "t", "id": '
    + b"[" * 900
    + b"]" * 900
    + b', "title": '
    + b'{"a":' * 900
    + b"1"
    + b"}" * 901,
    b'{"text": 1e999, "id": -1e999}',
    b'{"text": NaN, "title": Infinity}',
    b'{"text": "line\\u2028sep\\u2029ara\\u0085nel", "id": "x"}',
    '{"text": "raw \u2028 separator \u2029 inside", "id": "raw"}'.encode(),
    b'{"text": "\\ud800 lone surrogate", "id": "\\udfff"}',
    b'{"text": "nul \\u0000 inside"}',
    b"\x00\x01\x02\x7f",
    b"\xff\xfe\xfd invalid utf-8",
    b'{"text": "caf\xe9"}',
    b'\xef\xbb\xbf{"text": "bom in the middle"}',
    b'{"text": "a", "text": 3}',
    b'{"text": ["a", "b"], "title": {"x": 1}, "id": [1]}',
    b'{"text": true, "id": false}',
    b"null",
    b'"just a string"',
    b"[]",
    b"{}",
    b"\x0b\x0c\x1c\x1d\x1e",
    b"\r",
    b"   \t  ",
]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
words = st.lists(
    st.sampled_from(["the", "cat", "Paris", "", " ", "é", "\u2028", "[", "x y"]), max_size=6
)


def _dump(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def line_bytes(
    records: st.SearchStrategy[Any], nasty: list[bytes] = NASTY_LINES
) -> st.SearchStrategy[bytes]:
    """One line: a JSON dump of `records`, raw bytes, text, or one of the nasty lines."""
    return st.one_of(
        records.map(_dump),
        records.map(_dump),
        st.sampled_from(nasty),
        st.binary(max_size=40),
        st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
    )


def file_bytes(
    records: st.SearchStrategy[Any], nasty: list[bytes] = NASTY_LINES
) -> st.SearchStrategy[bytes]:
    """A whole file: lines joined by LF, CRLF or CR, maybe a BOM, maybe no final newline."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        lines = draw(st.lists(line_bytes(records, nasty), max_size=8))
        sep = draw(st.sampled_from([b"\n", b"\r\n", b"\r", b"\n\n"]))
        data = sep.join(lines) + draw(st.sampled_from([b"", sep]))
        if draw(st.booleans()):
            data = b"\xef\xbb\xbf" + data
        return data

    return build()


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ---- corpus readers (`prepare`) -------------------------------------------------------------
corpus_records = st.one_of(
    st.fixed_dictionaries(
        {"text": json_values},
        optional={"title": json_values, "id": json_values, "body": json_values},
    ),
    st.fixed_dictionaries({"text": st.text(max_size=60)}, optional={"id": st.text(max_size=5)}),
    json_values,
)


def _check_documents(docs: list[Any]) -> None:
    ids = [d.id for d in docs]
    assert len(ids) == len(set(ids))
    for doc in docs:
        assert isinstance(doc.text, str) and doc.text.strip()
        for value in (doc.id, doc.title, doc.text):
            value.encode("utf-8")  # no lone surrogates: Arrow can store it


@FUZZ
@given(data=file_bytes(corpus_records), suffix=st.sampled_from([".jsonl", ".ndjson", ".json"]))
def test_jsonl_corpus_reader_skips_bad_lines(tmp_path, data, suffix):
    path = _write(tmp_path / f"corpus{suffix}", data)
    stats: Counter[str] = Counter()
    docs = list(read_documents(open_sources([path], FieldNames()), stats))
    _check_documents(docs)
    assert stats["documents_read"] >= len(docs)


@FUZZ
@given(data=file_bytes(st.text(max_size=60)), folder=st.lists(st.binary(max_size=50), max_size=3))
def test_text_corpus_readers_accept_any_bytes(tmp_path, data, folder):
    text_file = _write(tmp_path / "corpus.txt", data)
    tree = tmp_path / "tree"
    for i, content in enumerate(folder):
        _write(tree / f"sub{i % 2}" / f"doc{i}.txt", content)
    tree.mkdir(exist_ok=True)
    stats: Counter[str] = Counter()
    docs = list(read_documents(open_sources([text_file, tree]), stats))
    _check_documents(docs)


# ---- the config loader ----------------------------------------------------------------------
garbage = st.one_of(
    json_values,
    st.sampled_from([0, -1, 10**40, -(10**40), 1.5, float("nan"), float("inf"), True, "", "x"]),
    st.lists(st.integers(), max_size=3),
)
keys = st.one_of(
    st.text(alphabet=string.ascii_lowercase + "_.", min_size=1, max_size=12),
    st.integers(),
    st.none(),
    st.booleans(),
)


#: Names the configs know (tasks, strategies, option keys), so values get past the first check.
KNOWN_NAMES = [
    *("knowledge_masking", "capitalization", "sentence_distance", "ir_relevance"),
    *("equal", "fixed", "uncertainty", "dwa", "gradnorm", "dtp", "hard", "mmoe", "ple", "cgc"),
    *("classification", "pair_classification", "regression", "ranking", "token_classification"),
    *("silver:pos", "silver:ner", "silver", "gold", "both", "random", "mt-avg", "ec", "da"),
    *("weights", "temperature", "alpha", "gamma", "lr", "ema", "kpi_from_loss", "levels"),
    *("num_experts", "dropout", "expert_hidden", "task_experts", "shared_experts"),
    *("tiny", "base", "bf16", "no", "linear", "cosine", "accuracy", "entity_f1", "mrr"),
]


def _plausible(hint: Any, depth: int) -> st.SearchStrategy[Any]:
    """Values of roughly the right type for a config field (or garbage, sometimes)."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return config_mappings(hint, depth + 1) if depth < 3 else garbage
    if origin is typing.Literal:
        return st.sampled_from(typing.get_args(hint)) | garbage
    if origin in (typing.Union, __import__("types").UnionType):
        return st.one_of(*[_plausible(a, depth) for a in typing.get_args(hint)])
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return st.lists(_plausible(item, depth), max_size=3) | garbage
    if origin is dict:
        _, item = typing.get_args(hint) or (str, Any)
        names = st.text(max_size=20) | st.sampled_from(KNOWN_NAMES)
        return st.dictionaries(names, _plausible(item, depth), max_size=3) | garbage
    simple = {
        int: st.integers(min_value=-5, max_value=10**6) | st.integers(),
        float: st.floats() | st.sampled_from(["3e-5", "1e999", "-0", ".5"]),
        bool: st.booleans(),
        str: st.text(max_size=20) | st.sampled_from(KNOWN_NAMES),
        type(None): st.none(),
    }
    return simple.get(hint, garbage) | garbage


def config_mappings(cls: type, depth: int = 0) -> st.SearchStrategy[dict[Any, Any]]:
    """Mappings with (some of) `cls`'s keys, values of about the right type, unknown keys."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: _plausible(hints[f.name], depth) for f in dataclasses.fields(cls)}
    known = st.fixed_dictionaries({}, optional=fields)
    unknown = st.dictionaries(keys, garbage, max_size=2)
    return st.one_of(known, known, st.tuples(known, unknown).map(lambda kv: kv[1] | kv[0]))


def yaml_text(cls: type) -> st.SearchStrategy[bytes]:
    """A config file: a YAML dump of a near-valid mapping, random YAML, text or bytes."""
    yaml_ish = st.lists(
        st.sampled_from(
            [
                "a:",
                " b: 1",
                "- x",
                "[",
                "]",
                "{",
                "}",
                ": :",
                "&a",
                "*a",
                "!!python/object:os.system",
                "? [1, 2]",
                "key: !!binary AAAA",
                "---",
                "...",
                "%YAML 1.1",
                "\t",
                "'",
                '"',
                "<<: *a",
                "#",
            ]
        ),
        max_size=10,
    ).map(lambda parts: "\n".join(parts).encode())
    return st.one_of(
        config_mappings(cls).map(lambda d: yaml.safe_dump(d, allow_unicode=True).encode()),
        config_mappings(cls).map(lambda d: yaml.safe_dump(d, allow_unicode=True).encode()),
        yaml_ish,
        st.sampled_from(
            [b"[" * 3000, b"a: " + b"[" * 3000, b"- " * 3000, b"\xff\xfe", b"\x00", b"", b"~"]
        ),
        st.binary(max_size=60),
        st.text(max_size=60).map(lambda t: t.encode("utf-8", "surrogatepass")),
    )


overrides = st.lists(
    st.one_of(
        st.tuples(
            st.sampled_from(
                [
                    "seed",
                    "batch_size",
                    "model.preset",
                    "optim.lr",
                    "data",
                    "tasks",
                    "epochs",
                    "encoder",
                    "tasks.knowledge_masking.budget",
                    "rounds",
                    "strategies",
                    "lr",
                    "a..b",
                    ".x",
                    "x.",
                    "seed.sub",
                    "precision",
                    "balancing_options.x",
                ]
            )
            | st.text(max_size=10),
            st.text(max_size=20)
            | st.sampled_from(["[", "{a: [", "!!python/name:os.system", "1e5"]),
        ).map(lambda kv: f"{kv[0]}={kv[1]}"),
        st.text(max_size=15),
    ),
    max_size=3,
)
CONFIG_CLASSES = [PretrainConfig, FinetuneConfig, SimulationConfig]


@pytest.mark.parametrize("cls", CONFIG_CLASSES, ids=lambda c: c.__name__)
def test_config_loader_raises_only_clear_errors(tmp_path, cls):
    @FUZZ
    @given(data=yaml_text(cls), extra=overrides)
    def check(data: bytes, extra: list[str]) -> None:
        path = _write(tmp_path / "config.yaml", data)
        try:
            load_config(cls, path, extra)
            event("loaded")
        except ValueError as error:
            event("refused")
            message = str(error)
            assert message.strip()
            assert str(path) in message or "override" in message, message

    check()


# ---- annotation batches (`ingest`) and pools ------------------------------------------------
SPECS = {
    "ner": TaskSpec("ner", "token_classification", ["O", "B-X", "I-X"], ["words"], "tags"),
    "sent": TaskSpec("sent", "classification", ["pos", "neg"], ["text"], "label"),
    "score": TaskSpec("score", "regression", None, ["text"], "label"),
    "rank": TaskSpec("rank", "ranking", None, ["query", "candidates"], "label"),
}
labels = st.fixed_dictionaries(
    {},
    optional={
        "ner": st.lists(st.sampled_from(["O", "B-X", "I-X", "Z"]) | garbage, max_size=5)
        | st.text(max_size=20).map(lambda t: "[" + t)
        | garbage,
        "sent": st.sampled_from(["pos", "neg", " pos ", "x"]) | garbage,
        "score": st.floats() | st.sampled_from(["1.5", 10**400, "1e999"]) | garbage,
        "rank": st.integers(-2, 4) | st.lists(st.floats(), max_size=4) | garbage,
    },
)
batch_records = st.one_of(
    st.fixed_dictionaries(
        {
            "id": st.sampled_from(["a", "b", "c", 1, " ", None]) | garbage,
            "labels": labels | garbage,
        },
        optional={
            "words": words | st.text(max_size=20) | garbage,
            "text": st.text(max_size=20) | garbage,
            "query": st.text(max_size=20) | garbage,
            "candidates": words | st.text(max_size=20) | garbage,
            "selection": st.fixed_dictionaries({}, optional={"batch": garbage, "rank": garbage})
            | garbage,
            "predictions": garbage,
            "confidence": garbage,
        },
    ),
    json_values,
)
pool_records = st.one_of(
    st.fixed_dictionaries(
        {"id": st.sampled_from(["a", "b", "c", 1, 2.0, "", None]) | garbage},
        optional={"words": words | garbage, "text": st.text(max_size=20) | garbage},
    ),
    json_values,
)


def _specs(names: list[str]) -> dict[str, TaskSpec]:
    return {n: SPECS[n] for n in names}


spec_names = st.lists(st.sampled_from(list(SPECS)), min_size=1, max_size=4, unique=True)
good_words = st.lists(
    st.sampled_from(["the", "cat", "Paris", "é", "a\u2028b"]), min_size=1, max_size=4
)


@st.composite
def good_batch_line(draw: st.DrawFn) -> dict[str, Any]:
    """A valid annotated line for every task in SPECS (a test keeps the tasks it needs)."""
    words = draw(good_words)
    candidates = draw(st.lists(st.text(min_size=1, max_size=8), min_size=2, max_size=4))
    tags = [draw(st.sampled_from(["O", "B-X", "I-X"])) for _ in words]
    rank = draw(st.integers(0, len(candidates) - 1) | st.just([1.0] * len(candidates)))
    return {
        "id": draw(st.sampled_from(["a", "b", "c", "1", 1, "new"])),
        "words": draw(st.just(words) | st.just(" ".join(words)) | st.just(json.dumps(words))),
        "text": draw(st.text(max_size=20)),
        "query": draw(st.text(max_size=20)),
        "candidates": candidates,
        "labels": {
            "ner": tags,
            "sent": draw(st.sampled_from(["pos", "neg", " neg"])),
            "score": draw(st.floats(-1e6, 1e6) | st.sampled_from(["2.5", 3])),
            "rank": rank,
        },
        "selection": draw(st.just({"batch": "b1", "rank": 0}) | st.just({})),
    }


@st.composite
def near_miss_line(draw: st.DrawFn) -> dict[str, Any]:
    """A valid line with one field or label replaced by garbage (or removed)."""
    line = draw(good_batch_line())
    where = line["labels"] if draw(st.booleans()) else line
    key = draw(st.sampled_from(sorted(where)))
    if draw(st.booleans()):
        del where[key]
    else:
        where[key] = draw(garbage)
    return line


def batch_file(names: list[str]) -> st.SearchStrategy[bytes]:
    """Mostly valid batches: good lines, near misses, now and then a garbage line."""
    lines = st.lists(
        st.one_of(
            good_batch_line().map(_dump),
            good_batch_line().map(_dump),
            good_batch_line().map(_dump),
            near_miss_line().map(_dump),
            line_bytes(batch_records),
        ),
        min_size=1,
        max_size=4,
    )
    return st.tuples(lines, st.sampled_from([b"\n", b"\r\n"])).map(
        lambda ls: ls[1].join(ls[0]) + ls[1]
    )


batches = st.one_of(
    spec_names.flatmap(lambda names: st.tuples(st.just(names), batch_file(names))),
    st.tuples(spec_names, file_bytes(batch_records)),
)


def _clear(error: DataError, path: Path) -> None:
    lines = str(error).splitlines()
    assert lines
    for line in lines:
        assert (
            line.startswith(str(path)) or line.startswith("... and") or " in " + str(path) in line
        ), line


@FUZZ
@given(batch=batches)
def test_batch_reader_raises_only_data_errors(tmp_path, batch):
    names, data = batch
    path = _write(tmp_path / "batch.jsonl", data)
    try:
        items = read_batch(path, _specs(names))
    except DataError as error:
        event("refused")
        _clear(error, path)
    else:
        event("read")
        assert items and all(set(i.labels) == set(names) for i in items)


POOL_NASTY = NASTY_LINES


@FUZZ
@given(
    data=file_bytes(pool_records, POOL_NASTY), suffix=st.sampled_from([".jsonl", ".csv", ".tsv"])
)
def test_pool_reader_raises_only_data_errors(tmp_path, data, suffix):
    path = _write(tmp_path / f"pool{suffix}", data)
    try:
        pool = read_pool(path)
    except DataError as error:
        event("refused")
        _clear(error, path)
    else:
        event("read")
        assert len(pool.ids) == len(set(pool.ids)) > 0


@pytest.mark.parametrize(
    "line", DEEP_OR_HUGE, ids=["deep-list", "deep-object", "huge-int", "huge-id"]
)
def test_pool_reader_deep_or_huge_json(tmp_path, line):
    path = _write(tmp_path / "pool.jsonl", b'{"id": "a"}\n' + line + b"\n")
    with pytest.raises(DataError, match=re.escape(f"{path}:2")):
        read_pool(path)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@FUZZ
@given(batch=batches)
def test_failed_ingest_writes_nothing(tmp_path_factory, batch):
    names, data = batch
    root = tmp_path_factory.mktemp("ingest")
    labeled = root / "labeled"
    labeled.mkdir()
    (labeled / "sent.jsonl").write_text('{"id": "a", "text": "hi", "label": "pos"}\n')
    pool = root / "pool.jsonl"
    rows = [
        {"id": k, "words": ["the", "cat"], "text": f"t{k}\u2028", "candidates": ["x", "y", "z"]}
        | {"query": "q"}
        for k in ("a", "b", "c", "1")
    ]  # a raw U+2028 inside a JSON string is still one line
    pool.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    batch = _write(root / "batch.jsonl", data)
    before = _snapshot(root)
    try:
        report = ingest(batch, labeled, _specs(names), pool)
    except DataError as error:
        event("refused")
        assert str(error).strip()
        assert _snapshot(root) == before
    else:
        event("ingested")
        left = read_pool(pool).ids if pool.read_text().strip() else []
        assert len(left) == len(rows) - report.removed_from_pool
        for path in labeled.glob("*.jsonl"):
            assert all(json.loads(line) for line in path.read_text().split("\n") if line)
        state = labeled / "loop_state.json"
        assert not any(report.added.values()) or json.loads(state.read_text())["rounds"]
