"""Tasks as questions (decaNLP): phrasing, span encoding, the shared pointer head, decoding,
metrics, and a joint run whose export is a stock question-answering model."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from ernie_style.config import load_config
from ernie_style.finetune.config import FinetuneConfig
from ernie_style.finetune.data import load_tasks
from ernie_style.finetune.export import load_exported
from ernie_style.finetune.heads import PointerHead
from ernie_style.finetune.questions import (
    NONE_WORD,
    QuestionExample,
    best_spans,
    class_question,
    collect_answers,
    encode_questions,
    entities,
    question_metrics,
)
from ernie_style.finetune.readers import RawExample
from ernie_style.finetune.trainer import FinetuneTrainer
from ernie_style.testing.finetune import (
    ROOT,
    make_encoder_dir,
    shipped_tasks,
    step_losses,
    write_config,
)

QA_DATA = ROOT / "data" / "finetune" / "wiki_qa"


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> Path:
    return make_encoder_dir(tmp_path_factory.mktemp("encoder") / "enc")


@pytest.fixture(scope="module")
def tokenizer(encoder_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(encoder_dir))


def question_tasks(with_pairs: bool = False) -> list[dict]:
    tasks = {t["name"]: t for t in shipped_tasks("sentiment", "wnut16")}
    tasks["sentiment"] |= {
        "question": "Is this review {labels}?",
        "label_words": {"neg": "negative", "pos": "positive"},
    }
    tasks["wnut16"] |= {
        "question": "Which {type} is mentioned?",
        "label_words": {"geo-loc": "place"},
    }
    pairs = shipped_tasks("wiki_pairs")[0] | {
        "question": "Are both sentences from {labels} articles?",
        "label_words": {"different": "different", "same": "the same"},
    }
    qa = {
        "name": "wiki_qa",
        "type": "question_answering",
        "text_fields": ["question", "context"],
        "data": {s: str(QA_DATA / f"{s}.jsonl") for s in ("train", "dev", "test")},
    }
    return [*tasks.values(), qa] + ([pairs] if with_pairs else [])


def test_label_words_are_listed_and_located_in_the_question():
    question, spans = class_question("Is this review {labels}?", ["bad", "so-so", "good"])
    assert question == "Is this review bad, so-so or good?"
    assert [question[a:b] for _, a, b in spans] == ["bad", "so-so", "good"]
    with pytest.raises(ValueError, match=r"needs \{labels\}"):
        class_question("Is this a review?", ["a", "b"])


def test_bio_entities():
    tags = ["O", "B-person", "I-person", "O", "I-place", "B-place", "B-place"]
    assert entities(tags) == [("person", 1, 2), ("place", 4, 4), ("place", 5, 5), ("place", 6, 6)]


def perfect_logits(batch) -> torch.Tensor:
    """Start/end logits that point at each row's labelled span."""
    logits = torch.zeros(*batch["input_ids"].shape, 2)
    for row, (start, end) in enumerate(batch["labels"].tolist()):
        logits[row, start, 0] = logits[row, end, 1] = 10.0
    return logits


def test_each_kind_of_question_round_trips_to_its_answer(encoder_dir, tokenizer, tmp_path):
    config = load_config(
        FinetuneConfig,
        write_config(
            tmp_path / "c.yaml", encoder_dir, tmp_path, question_tasks(True), max_seq_len=256
        ),
    )
    tasks = load_tasks(config, tokenizer)
    for name, task in tasks.items():
        examples = task.splits["dev"][:40]
        if name == "wiki_qa":  # answers cut off by truncation are counted, not round-tripped
            examples = [e for e in task.splits["dev"] if e["gold_spans"]][:40]
            assert len(examples) >= 30
        batch = task.collator(examples)
        rows = collect_answers(task.type, perfect_logits(batch), batch, examples, task.labels or [])
        raw, gold = [r[2] for r in rows], [r[3] for r in rows]
        metrics = question_metrics(task.type, config.task(name).metrics, raw, gold)
        assert all(value == 1.0 for value in metrics.values()), (name, metrics)
        first = examples[0]
        answer = tokenizer.decode(first["input_ids"][first["labels"][0] : first["labels"][1] + 1])
        if name == "sentiment":  # the label word, pointed at in the question
            assert answer in ("negative", "positive") and rows[0][0] == rows[0][1]
        if name == "wiki_pairs":  # a pair: both texts in the context, split by [SEP]
            assert answer in ("different", "the same")
            assert tokenizer.decode(first["input_ids"]).count("[SEP]") == 3
        if name == "wnut16":
            kinds = [e["kind"] for e in task.splits["dev"][:10]]
            assert "geo-loc" in kinds and len(set(kinds)) == 10  # one question per type
            asked = tokenizer.decode(task.splits["dev"][kinds.index("geo-loc")]["input_ids"])
            assert "which place is mentioned? none" in asked
    # Chance is far below 1: the round trip is not trivially perfect.
    task = tasks["wiki_qa"]
    examples = task.splits["dev"][:40]
    batch = task.collator(examples)
    rows = collect_answers(
        task.type, torch.zeros(*batch["input_ids"].shape, 2), batch, examples, []
    )
    chance = question_metrics(
        task.type, ["exact_match"], [r[2] for r in rows], [r[3] for r in rows]
    )
    assert chance["exact_match"] < 0.2


def test_encoding_maps_answers_in_question_and_context_to_tokens(tokenizer):
    examples = [
        QuestionExample("x:1", "Is it good or bad?", "A fine day.", (0, 6, 10)),
        QuestionExample("x:2", "Who came?", "Yesterday Ada Lovelace came.", (1, 10, 22), free=True),
    ]
    stats = Counter()
    encoded = encode_questions(examples, tokenizer, 64, stats)
    words = [tokenizer.decode(e["input_ids"][e["labels"][0] : e["labels"][1] + 1]) for e in encoded]
    assert words == ["good", "ada lovelace"] and not stats["answers_truncated"]
    assert encoded[0]["context_range"] == [-1, -1] and encoded[1]["context_range"][0] > 0
    short = encode_questions(examples[1:], tokenizer, 8, stats)  # the answer is cut off
    assert stats["answers_truncated"] == 1 and short[0]["labels"] == [0, 0]


def test_the_pointer_masks_padding_and_decodes_the_best_span():
    head = PointerHead(8, dropout=0.0)
    hidden = torch.randn(2, 6, 8)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6])
    out = head(hidden, None, torch.tensor([[1, 2], [3, 5]]), attention_mask=mask)
    assert out.logits.shape == (2, 6, 2) and (out.logits[0, 4:] == -1e4).all()
    out.loss.backward()
    logits = torch.full((1, 10, 2), -5.0)
    logits[0, 6, 0], logits[0, 8, 1] = 3.0, 3.0  # best free span 6..8
    logits[0, 1, 0], logits[0, 1, 1] = 2.0, 2.0  # a candidate ("none") scores less
    batch = {
        "candidate_spans": torch.tensor([[[1, 1]]]),
        "context_range": torch.tensor([[4, 9]]),
    }
    assert best_spans(logits, batch) == [(6, 8)]
    logits[0, 1] = 4.0
    assert best_spans(logits, batch) == [(1, 1)]
    batch["context_range"] = torch.tensor([[-1, -1]])  # classification: candidates only
    logits[0, 1] = -9.0
    assert best_spans(logits, batch) == [(1, 1)]


def test_token_task_metrics_count_every_gold_entity():
    predicted = [(3, 4), None, (7, 7)]
    gold = [[(3, 4), (9, 9)], [], [(6, 7)]]
    metrics = question_metrics(
        "token_classification", ["entity_precision", "entity_recall"], predicted, gold
    )
    assert metrics == {"entity_precision": 0.5, "entity_recall": 1 / 3}


def test_a_joint_run_shares_one_pointer_exports_it_and_resumes_exactly(encoder_dir, tmp_path):
    top = {"epochs": 1, "max_seq_len": 256, "checkpoint_every": 40, "keep_checkpoints": 20}
    path = write_config(tmp_path / "a.yaml", encoder_dir, tmp_path / "a", question_tasks(), **top)
    trainer = FinetuneTrainer(load_config(FinetuneConfig, path))
    table = trainer.train()
    model = trainer.unwrapped
    assert set(table) == {"sentiment", "wnut16", "wiki_qa"} and len(model.heads) == 0
    own = {n for n, _ in model.named_parameters() if not n.startswith("encoder.")}
    assert own == {"pointer.classifier.weight", "pointer.classifier.bias"}  # nothing per task
    stock, info = load_exported(tmp_path / "a" / "tasks" / "questions")
    assert info["tasks"] == ["wnut16", "sentiment", "wiki_qa"]
    assert type(stock).__name__ == info["architecture"] == "ErnieForQuestionAnswering"
    task = trainer.tasks["wiki_qa"]
    batch = task.collator(task.splits["dev"][:4])
    with torch.no_grad():
        ours = model.eval()(batch | {"task": "wiki_qa"}).logits
        theirs = stock.eval()(
            **{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        )
    valid = batch["attention_mask"].bool()
    torch.testing.assert_close(theirs.start_logits[valid], ours[..., 0][valid], rtol=0, atol=0)
    torch.testing.assert_close(theirs.end_logits[valid], ours[..., 1][valid], rtol=0, atol=0)
    # Zero-shot: a task never trained, phrased as a question, answered by the same pointer.
    tweets = shipped_tasks("sentiment")[0] | {
        "name": "tweets", "question": "Is this {labels}?", "labels": ["neg", "pos"],
        "label_words": {"neg": "sad", "pos": "happy"},
    }  # fmt: skip
    probe = write_config(
        tmp_path / "p.yaml", encoder_dir, tmp_path / "p", [tweets], max_seq_len=256
    )
    new = load_tasks(load_config(FinetuneConfig, probe), trainer.tokenizer)["tweets"]
    model.add_question_task("tweets")
    batch = new.collator(new.splits["test"][:8])
    with torch.no_grad():
        logits = model(batch | {"task": "tweets"}).logits
    rows = collect_answers("classification", logits, batch, new.splits["test"][:8], ["neg", "pos"])
    assert {r[0] for r in rows} <= {"neg", "pos"} and len(rows) == 8
    predictions = (tmp_path / "a" / "predictions" / "wnut16.jsonl").read_text().splitlines()
    assert json.loads(predictions[1])["source"].endswith("test.jsonl:1")  # 2nd type, 1st line
    # Resume from a checkpoint: the same steps, bit for bit.
    middle = tmp_path / "a" / "checkpoints" / "step-00000040"
    shutil.copytree(middle, tmp_path / "b" / "checkpoints" / middle.name)
    path_b = write_config(tmp_path / "b.yaml", encoder_dir, tmp_path / "b", question_tasks(), **top)
    FinetuneTrainer(load_config(FinetuneConfig, path_b), resume="auto").train()
    full = step_losses(tmp_path / "a")
    assert step_losses(tmp_path / "b") == {s: v for s, v in full.items() if s >= 40}


def test_rephrased_labels_are_asked_with_the_new_words(encoder_dir, tokenizer, tmp_path):
    """Zero-shot rephrasing: the same task asked with other label words (good/bad) is answered
    by pointing at those words."""
    tasks = question_tasks()[1:2]  # sentiment
    tasks[0]["label_words"] = {"neg": "bad", "pos": "good"}
    config = load_config(
        FinetuneConfig, write_config(tmp_path / "c.yaml", encoder_dir, tmp_path, tasks)
    )
    task = load_tasks(config, tokenizer)["sentiment"]
    example = task.splits["test"][0]
    assert "review good or bad?" not in tokenizer.decode(example["input_ids"])
    assert "review bad or good?" in tokenizer.decode(example["input_ids"])
    spans = [
        tokenizer.decode(example["input_ids"][s : e + 1]) for s, e in example["candidate_spans"]
    ]
    assert spans == ["bad", "good"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"question": "Is this a review?"},
            r"tasks\[1\]\.question: 'Is this a review\?' needs \{labels\}",
        ),
        ({"label_words": {"meh": "x"}}, r"tasks\[1\]\.label_words: \['meh'\] are not labels"),
        ({"question": None}, r"tasks\[1\]\.label_words: only for tasks with a question"),
        ({"head_layer": 1}, r"tasks\[1\]\.question: the shared pointer head reads the top layer"),
        ({"metrics": ["f1_binary"]}, r"tasks\[1\]\.metrics\[0\]: unknown metric 'f1_binary'"),
    ],
)
def test_question_errors_name_the_key(encoder_dir, tmp_path, change, message):
    tasks = question_tasks()
    tasks[1] = {k: v for k, v in (tasks[1] | change).items() if v is not None}
    with pytest.raises(ValueError, match=message):
        load_config(FinetuneConfig, write_config(tmp_path / "c.yaml", encoder_dir, tmp_path, tasks))


def test_a_qa_answer_missing_from_its_context_names_the_line(encoder_dir, tmp_path, tokenizer):
    bad = tmp_path / "qa.jsonl"
    rows = [{"question": "q?", "context": "some text", "answer": "text"}] * 3
    rows.append({"question": "q?", "context": "some text", "answer": "absent"})
    bad.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    qa = question_tasks()[-1] | {"data": {"train": str(bad), "dev": str(bad)}}
    config = load_config(
        FinetuneConfig, write_config(tmp_path / "c.yaml", encoder_dir, tmp_path, [qa])
    )
    with pytest.raises(ValueError, match=r"qa\.jsonl:4: the answer 'absent' does not occur"):
        load_tasks(config, tokenizer)


def test_phrasing_a_pair_joins_its_texts_with_the_separator():
    from ernie_style.finetune.config import FinetuneTask
    from ernie_style.finetune.questions import phrase

    task = FinetuneTask(name="p", type="pair_classification", question="Same topic: {labels}?")
    examples = [RawExample("f:1", ["one text", "another"], label=1)]
    (q,) = phrase(task, examples, ["no", "yes"], "[SEP]")
    assert q.context == "one text [SEP] another" and q.question == "Same topic: no or yes?"
    assert q.question[q.answer[1] : q.answer[2]] == "yes"
    assert NONE_WORD == "none"
