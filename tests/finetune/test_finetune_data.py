"""Fine-tuning data: readers, error messages (FILE:LINE), counted warnings, encoding, batching,
silver labels, and the shipped sets and configs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from ernie_style.config import load_config
from ernie_style.finetune.config import DataPaths, FinetuneConfig, FinetuneTask
from ernie_style.finetune.data import (
    IGNORE_INDEX,
    Collator,
    encode_examples,
    load_tasks,
)
from ernie_style.finetune.readers import DataError, RawExample, read_examples, read_records
from ernie_style.finetune.silver import UPOS_TAGS, silver_examples, silver_labels, source_units

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "data" / "finetune"


@pytest.fixture(scope="module")
def nlp():
    from ernie_style.corpus.spacy_annotator import load_pipeline

    return load_pipeline()


def task(type_: str = "classification", **kwargs) -> FinetuneTask:
    defaults = {
        "classification": {"text_fields": ["text"], "labels": ["neg", "pos"]},
        "pair_classification": {"text_fields": ["a", "b"], "labels": ["no", "yes"]},
        "regression": {"text_fields": ["a", "b"], "label_field": "score"},
        "token_classification": {"text_fields": ["tokens"], "labels": ["O", "B-PER", "I-PER"]},
        "ranking": {"query_field": "query", "candidates_field": "candidates"},
    }[type_]
    section = FinetuneTask(type=type_, **{"name": "t", **defaults, **kwargs})
    if section.label_field is None:
        section.label_field = "tags" if type_ == "token_classification" else "label"
    return section


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def jsonl(path: Path, rows: list) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in rows))


def read(section: FinetuneTask, path: Path, split: str = "train", stats: Counter | None = None):
    return read_examples(section, path, split, Counter() if stats is None else stats)


# --- readers -------------------------------------------------------------------------------


def test_csv_tsv_jsonl_and_saved_dataset_read_the_same_examples(tmp_path):
    import datasets

    rows = [{"text": "good film", "label": "pos"}, {"text": 'a "bad", long film', "label": "neg"}]
    csv_path = write(tmp_path / "d.csv", 'text,label\ngood film,pos\n"a ""bad"", long film",neg\n')
    tsv_path = write(
        tmp_path / "d.tsv", 'text\tlabel\ngood film\tpos\n"a ""bad"", long film"\tneg\n'
    )
    jsonl_path = jsonl(tmp_path / "d.jsonl", rows)
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    saved = tmp_path / "saved"
    datasets.Dataset.from_list(rows, features=features).save_to_disk(str(saved))
    for path in (csv_path, tsv_path, jsonl_path, saved):
        examples = read(task(), path)
        assert [(e.texts, e.label) for e in examples] == [
            (["good film"], 1),
            (['a "bad", long film'], 0),
        ], path
    assert [e.where for e in read(task(), csv_path)] == [f"{csv_path}:2", f"{csv_path}:3"]
    assert [e.where for e in read(task(), saved)] == [f"{saved}: row 0", f"{saved}: row 1"]


def test_multiline_csv_records_are_located_at_their_first_line(tmp_path):
    path = write(tmp_path / "d.csv", 'text,label\n"two\nlines",pos\nmeh text,meh\n')
    with pytest.raises(DataError) as error:
        read(task(), path)
    assert str(error.value) == f"{path}:4: label 'meh' not in labels ['neg', 'pos']"


def test_saved_dataset_dict_is_rejected_with_a_hint(tmp_path):
    import datasets

    saved = tmp_path / "dd"
    dataset = datasets.Dataset.from_list([{"text": "x", "label": "pos"}])
    datasets.DatasetDict({"train": dataset}).save_to_disk(str(saved))
    with pytest.raises(DataError, match=re.escape(f"give one split's directory (e.g. {saved}")):
        read_records(saved, ["text"])


def test_token_and_ranking_fields_from_tsv_and_jsonl(tmp_path):
    tsv = write(tmp_path / "tok.tsv", "tokens\ttags\nAda Lovelace wrote\tB-PER I-PER O\n")
    [example] = read(task("token_classification"), tsv)
    assert example.words == ["Ada", "Lovelace", "wrote"] and example.label == [1, 2, 0]
    ranking = jsonl(
        tmp_path / "r.jsonl",
        [
            {"query": "q", "candidates": ["a", "b", "c"], "label": 2},
            {"query": "q", "candidates": ["a", "b"], "label": [0, 2]},
        ],
    )
    first, second = read(task("ranking"), ranking)
    assert first.candidates == ["a", "b", "c"] and first.label == [0.0, 0.0, 1.0]
    assert second.label == [0.0, 2.0]
    cell = write(tmp_path / "r.tsv", 'query\tcandidates\tlabel\nq\t"[""a"", ""b""]"\t1\n')
    assert read(task("ranking"), cell)[0].label == [0.0, 1.0]


# --- bad input: errors name FILE:LINE --------------------------------------------------------


def test_missing_column_names_the_header_line(tmp_path):
    path = write(tmp_path / "dev.tsv", "text\tlable\nfine\tpos\n")
    with pytest.raises(DataError) as error:
        read(task(), path, "dev")
    assert str(error.value) == (
        f"{path}: line 1 (header): no column 'label'; columns are ['text', 'lable']"
    )


@pytest.mark.parametrize(
    ("section", "lines", "message"),
    [
        (
            task(),
            ['{"text": "ok", "label": "pos"}', '{"text": "hmm", "label": "meh"}'],
            "{path}:2: label 'meh' not in labels ['neg', 'pos']",
        ),
        (
            task(),
            ['{"text": "ok", "label": "pos"}', '{"text": "ok" "label": "pos"}'],
            "{path}:2: invalid JSON: Expecting ',' delimiter (column 15)",
        ),
        (task(), ['["ok", "pos"]'], "{path}:1: expected a JSON object, got list"),
        (task(), ['{"text": "ok"}'], "{path}:1: no field 'label'; fields are ['text']"),
        (task(), ['{"text": 3, "label": "pos"}'], "{path}:1: field 'text' must be text, got int"),
        (
            task("regression"),
            ['{"a": "x", "b": "y", "score": "abc"}'],
            "{path}:1: score 'abc' is not a number",
        ),
        (
            task("regression"),
            ['{"a": "x", "b": "y", "score": NaN}'],
            "{path}:1: score nan is not a finite number",
        ),
        (
            task("token_classification"),
            ['{"tokens": ["Ada", "wrote", "."], "tags": ["B-PER", "O"]}'],
            "{path}:1: 3 tokens but 2 tags",
        ),
        (
            task("token_classification"),
            ['{"tokens": ["Ada"], "tags": ["B-LOC"]}'],
            "{path}:1: tag 'B-LOC' not in labels ['O', 'B-PER', 'I-PER']",
        ),
        (
            task("token_classification"),
            ['{"tokens": [], "tags": []}'],
            "{path}:1: no tokens",
        ),
        (
            task("ranking"),
            ['{"query": "q", "candidates": ["a", "b"], "label": 2}'],
            "{path}:1: label 2 is not a candidate index (0..1)",
        ),
        (
            task("ranking"),
            ['{"query": "q", "candidates": ["a", "b"], "label": [1, 0, 0]}'],
            "{path}:1: 3 relevance grades for 2 candidates",
        ),
        (
            task("ranking"),
            ['{"query": "q", "candidates": ["a"], "label": 0}'],
            "{path}:1: field 'candidates': at least 2 candidates are needed",
        ),
    ],
)
def test_bad_jsonl_records_name_file_and_line(tmp_path, section, lines, message):
    path = write(tmp_path / "train.jsonl", "\n".join(lines) + "\n")
    with pytest.raises(DataError) as error:
        read(section, path)
    assert str(error.value) == message.format(path=path)


def test_all_problems_of_a_file_are_reported_at_once(tmp_path):
    rows = [{"text": "x", "label": "pos"}] + [{"text": "x", "label": f"l{i}"} for i in range(12)]
    path = jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError) as error:
        read(task(), path)
    lines = str(error.value).splitlines()
    assert lines[0] == f"{path}:2: label 'l0' not in labels ['neg', 'pos']"
    assert lines[9].startswith(f"{path}:11: label 'l9'")
    assert lines[10] == f"... and 2 more problems in {path}"


def test_csv_row_with_the_wrong_number_of_fields(tmp_path):
    path = write(tmp_path / "train.csv", "text,label\nfine,pos\ntoo,many,fields\n")
    with pytest.raises(DataError) as error:
        read(task(), path)
    assert str(error.value) == f"{path}:3: 3 fields, the header has 2"


def test_unreadable_files(tmp_path):
    latin = write(tmp_path / "train.tsv", "text\tlabel\ncaf\xe9\tpos\n".encode("latin-1"))
    with pytest.raises(DataError) as error:
        read(task(), latin)
    assert str(error.value) == f"{latin}:2: not UTF-8 text (invalid continuation byte)"
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'nope.tsv'}: file does not exist")):
        read(task(), tmp_path / "nope.tsv")
    empty = write(tmp_path / "empty.csv", "")
    with pytest.raises(DataError, match=re.escape(f"{empty}: empty file (no header row)")):
        read(task(), empty)


@pytest.mark.parametrize("split", ["train", "dev"])
def test_empty_train_or_dev_set_is_an_error(tmp_path, split):
    path = write(tmp_path / f"{split}.tsv", "text\tlabel\n\n")
    with pytest.raises(DataError) as error:
        read(task(), path, split)
    assert str(error.value) == f"{path}: no examples (the {split} set is empty)"
    assert read(task(), path, "test") == []


# --- encoding and counted warnings ---------------------------------------------------------


def test_single_texts_truncation_is_counted(tokenizer):
    examples = [
        RawExample("f:2", ["short text"], label=0),
        RawExample("f:3", ["word " * 50], label=1),
    ]
    stats: Counter = Counter()
    encoded = encode_examples("classification", examples, tokenizer, 16, stats)
    assert stats["truncated"] == 1
    assert (
        len(encoded[1]["input_ids"]) == 16 and encoded[1]["input_ids"][-1] == tokenizer.sep_token_id
    )
    assert encoded[0]["input_ids"] == tokenizer("short text")["input_ids"]
    assert [e["labels"] for e in encoded] == [0, 1]


def test_pair_encoding_keeps_token_type_ids(tokenizer):
    examples = [
        RawExample("f:2", ["Einstein was born in Ulm", "He studied physics"], label=1),
        RawExample("f:3", ["city " * 40, "river " * 40], label=0),
    ]
    stats: Counter = Counter()
    encoded = encode_examples("pair_classification", examples, tokenizer, 32, stats)
    assert stats["truncated"] == 1
    sep = tokenizer.sep_token_id
    for example in encoded:
        ids, types = example["input_ids"], example["token_type_ids"]
        first_sep = ids.index(sep)
        assert types == [0] * (first_sep + 1) + [1] * (len(ids) - first_sep - 1)
        assert ids[0] == tokenizer.cls_token_id and ids[-1] == sep and ids.count(sep) == 2
    assert len(encoded[1]["input_ids"]) == 32
    batch = Collator("pair_classification", tokenizer.pad_token_id)(encoded)
    assert batch["token_type_ids"][0].max() == 1
    assert batch["input_ids"].shape == (2, 32) and batch["labels"].tolist() == [1, 0]


def test_token_labels_only_on_first_subtokens(tokenizer):
    words = [["Einstein", "physicswork", "in", "Ulm", "\u200b", "."], ["Curie"] * 30]
    examples = [
        RawExample("f:1", words=words[0], label=[1, 0, 0, 1, 0, 0]),
        RawExample("f:2", words=words[1], label=[1] * 30),
    ]
    stats: Counter = Counter()
    encoded = encode_examples("token_classification", examples, tokenizer, 16, stats)
    reference = tokenizer(words[0], is_split_into_words=True)
    word_ids = reference.word_ids()
    assert encoded[0]["input_ids"] == reference["input_ids"]
    expected, previous = [], None
    for word in word_ids:
        first = word is not None and word != previous
        expected.append(examples[0].label[word] if first else IGNORE_INDEX)
        previous = word
    assert encoded[0]["labels"] == expected
    assert sum(label != IGNORE_INDEX for label in expected) == 5  # the zero-width word is lost
    assert len([w for w in word_ids if w == 1]) > 1  # "physicswork" has several sub-tokens
    kept = (
        len(
            tokenizer(words[1], is_split_into_words=True, truncation=True, max_length=16).word_ids()
        )
        - 2
    )
    curie_pieces = len(tokenizer("Curie")["input_ids"]) - 2
    assert stats == Counter(
        truncated=1,
        words_without_subtokens=1,
        words_truncated=30 - kept // curie_pieces,
    )
    batch = Collator("token_classification", tokenizer.pad_token_id)(encoded)
    assert batch["labels"].shape == batch["input_ids"].shape == (2, 16)
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()


def test_ranking_groups_stay_intact(tokenizer):
    examples = [
        RawExample(
            "f:1",
            ["Marie Curie"],
            candidates=["She won", "The river", "Python"],
            label=[0.0, 1.0, 0.0],
        ),
        RawExample("f:2", ["New York"], candidates=["city", "valley"], label=[1.0, 0.0]),
    ]
    encoded = encode_examples("ranking", examples, tokenizer, 64, Counter())
    assert [len(e["input_ids"]) for e in encoded] == [3, 2]
    for example, raw in zip(encoded, examples, strict=True):
        for ids, candidate in zip(example["input_ids"], raw.candidates, strict=True):
            assert ids == tokenizer(raw.texts[0], candidate)["input_ids"]
        assert example["labels"] == raw.label
    batch = Collator("ranking", tokenizer.pad_token_id)(encoded)
    assert batch["input_ids"].shape[:2] == (2, 3) and batch["input_ids"].shape[2] % 8 == 0
    assert batch["candidate_mask"].tolist() == [[True, True, True], [True, True, False]]
    assert batch["labels"].tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
    assert batch["attention_mask"][1, 2].tolist()[:2] == [1, 0]  # padded candidate: one pad
    assert batch["token_type_ids"][0, 0].max() == 1


def test_collator_pads_to_a_multiple_of_eight():
    examples = [
        {"input_ids": [2, 5, 3], "token_type_ids": [0, 0, 0], "labels": 0.5},
        {"input_ids": [2] + [7] * 8 + [3], "token_type_ids": [0] * 10, "labels": 1.0},
    ]
    batch = Collator("regression", pad_token_id=0)(examples)
    assert batch["input_ids"].shape == (2, 16)
    assert batch["attention_mask"].sum(1).tolist() == [3, 10]
    assert batch["labels"].dtype == torch.float and batch["labels"].tolist() == [0.5, 1.0]
    assert Collator("regression", 0, pad_to_multiple_of=1)(examples)["input_ids"].shape == (2, 10)


# --- silver labels -------------------------------------------------------------------------


def test_silver_label_sets(nlp):
    assert silver_labels("silver:pos", nlp) == list(UPOS_TAGS) and len(UPOS_TAGS) == 17
    ner = silver_labels("silver:ner", nlp)
    assert ner[0] == "O" and "B-PERSON" in ner and "I-GPE" in ner and len(ner) == 37


def test_silver_pos_and_ner_tag_texts_and_word_lists(nlp, tmp_path):
    source = [
        RawExample("f:1", ["Barack Obama visited Paris in March."], label=0),
        RawExample("f:2", ["Barack Obama visited Paris in March."], label=1),  # tagged once
        RawExample("f:3", words=["Marie", "Curie", "lived", "in", "Warsaw"], label=[0] * 5),
    ]
    assert len(source_units(source)) == 2
    for scheme in ("silver:pos", "silver:ner"):
        labels = silver_labels(scheme, nlp)
        examples = silver_examples(source, scheme, nlp, labels, "silver", tmp_path / "cache")
        assert [e.where for e in examples] == ["silver#0", "silver#1"]
        assert examples[0].words == ["Barack", "Obama", "visited", "Paris", "in", "March", "."]
        assert examples[1].words == ["Marie", "Curie", "lived", "in", "Warsaw"]
        tags = [[labels[i] for i in e.label] for e in examples]
        assert all(len(t) == len(e.words) for t, e in zip(tags, examples, strict=True))
        if scheme == "silver:pos":
            assert tags[0][:3] == ["PROPN", "PROPN", "VERB"] and tags[0][-1] == "PUNCT"
        else:
            assert tags[0][:2] == ["B-PERSON", "I-PERSON"] and tags[0][3] == "B-GPE"
            assert tags[1][:2] == ["B-PERSON", "I-PERSON"]
    doc = nlp("Barack Obama visited Paris in March.")  # the full pipeline agrees
    pos = silver_examples(source[:1], "silver:pos", nlp, list(UPOS_TAGS), "s")[0]
    assert [UPOS_TAGS[i] for i in pos.label] == [t.pos_ for t in doc]
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(cached) == 2 and all(n.endswith(".json") for n in cached)  # no temp files left
    again = silver_examples(
        source, "silver:ner", nlp, silver_labels("silver:ner", nlp), "s", tmp_path / "cache"
    )
    assert [e.words for e in again] == [e.words for e in examples]


def test_load_tasks_mixes_gold_and_silver(nlp, tokenizer, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "train.tsv", "text\tlabel\nMarie Curie lived in Paris.\tpos\nNo.\tneg\n")
    write(tmp_path / "dev.tsv", "text\tlabel\nAlbert Einstein was born in Ulm.\tpos\n")
    jsonl(
        tmp_path / "gold.jsonl",
        [{"tokens": ["Python", "is", "fun"], "tags": ["PROPN", "AUX", "ADJ"]}],
    )
    config = FinetuneConfig(
        encoder="enc",
        tasks=[
            task(name="src", data=DataPaths(train="train.tsv", dev="dev.tsv")),
            FinetuneTask(
                name="pos",
                type="token_classification",
                labels="silver:pos",
                silver_source="src",
                silver_mix="both",
                text_fields=["tokens"],
                data=DataPaths(train="gold.jsonl"),
            ),
        ],
    )
    config.validate()
    tasks = load_tasks(config, tokenizer, nlp=nlp, cache_dir=tmp_path / "out" / "silver")
    pos = tasks["pos"]
    assert pos.labels == list(UPOS_TAGS) and pos.num_labels == 17
    assert len(pos.splits["train"]) == 3 and len(pos.splits["dev"]) == 1
    assert pos.locations["train"][0] == "gold.jsonl:1"
    assert pos.locations["dev"] == ["silver silver:pos of src/dev#0"]
    assert tasks["src"].summary() == ["src/train: 2 examples", "src/dev: 1 examples"]
    assert tasks["src"].id2label == {0: "neg", 1: "pos"}


# --- shipped data and configs --------------------------------------------------------------

SIZES = {
    "wnut16": (400, 150, 150),
    "sentiment": (120, 40, 40),
    "doc_similarity": (435, 45, 45),
    "wiki_pairs": (500, 100, 100),
    "wiki_ranking": (300, 80, 80),
}


@pytest.fixture
def demo_config(monkeypatch):
    monkeypatch.chdir(ROOT)
    return load_config(FinetuneConfig, ROOT / "configs" / "finetune" / "demo_multitask.yaml")


def test_shipped_sets_parse_with_the_documented_sizes(demo_config):
    assert {t.name for t in demo_config.tasks} == set(SIZES)
    for section in demo_config.tasks:
        for split, size in zip(("train", "dev", "test"), SIZES[section.name], strict=True):
            stats: Counter = Counter()
            examples = read_examples(section, getattr(section.data, split), split, stats)
            assert len(examples) == size, (section.name, split)
            assert not stats, (section.name, split, stats)
    readme = (SHIPPED / "README.md").read_text(encoding="utf-8")
    for name, (train, dev, test) in SIZES.items():
        assert re.search(rf"`{name}/`.*\| {train} / {dev} / {test} ", readme), name
    total = sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file())
    assert total < 1_300_000  # 1.27 MB with wiki_qa (QA for tasks as questions)


def test_shipped_sets_are_what_the_script_builds(tmp_path):
    script = SHIPPED / "make_finetune_data.py"
    subprocess.run(
        [sys.executable, str(script), "--output", str(tmp_path)], check=True, capture_output=True
    )
    built = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert len(built) == 18  # 6 sets x 3 splits (wiki_qa is derived from wiki_ranking)
    for relative in built:
        assert (tmp_path / relative).read_bytes() == (SHIPPED / relative).read_bytes(), relative


def test_shipped_configs_validate_and_load(demo_config, tokenizer, nlp):
    silver = load_config(FinetuneConfig, ROOT / "configs" / "finetune" / "wnut16_silver.yaml")
    assert [t.labels for t in silver.tasks if t.is_silver] == ["silver:ner", "silver:pos"]
    assert demo_config.encoder == "runs/demo/release"
    tasks = load_tasks(demo_config, tokenizer)
    assert [t.type for t in tasks.values()] == [
        "token_classification",
        "classification",
        "regression",
        "pair_classification",
        "ranking",
    ]
    assert tasks["wnut16"].num_labels == 21 and tasks["doc_similarity"].num_labels == 1
    for encoded in tasks.values():
        batch = encoded.collator(encoded.splits["train"][:4])
        assert batch["input_ids"].shape[-1] <= demo_config.max_seq_len
    silver_tasks = load_tasks(silver, tokenizer, nlp=nlp)
    assert silver_tasks["wnut16_spacy_ner"].num_labels == 37
    assert len(silver_tasks["sentiment_pos"].splits["train"]) == 120
