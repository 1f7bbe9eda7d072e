"""What `ernie-style examples` prints: every task's examples built from a prepared corpus,
summarised (counts, lengths, label distribution, decoded samples)."""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ernie_style.corpus.document import DocumentSequence
from ernie_style.pretrain.examples import IGNORE_INDEX, CorpusContext, Example
from ernie_style.pretrain.registry import PretrainTask, get_task, registered_tasks
from ernie_style.tokenizer import load_tokenizer


def resolve_tasks(
    spec: str, tokenizer: object, max_seq_len: int, language: str = "en"
) -> list[PretrainTask]:
    """Instantiate the tasks named in a comma-separated spec ('all' = every registered task
    that can learn something in `language`; the others are named on stdout with the reason)."""
    everything = spec == "all"
    names = list(registered_tasks()) if everything else [n.strip() for n in spec.split(",")]
    tasks = []
    for name in filter(None, names):
        task_class = get_task(name)
        if language in task_class.unusable_in:
            print(f"{name}: left out ({task_class.unusable_in[language]})")
            continue
        tasks.append(task_class(tokenizer, max_seq_len=max_seq_len, language=language))
    return tasks


def build_all(task: PretrainTask, corpus: CorpusContext, seed: int) -> list[Example]:
    """Every example the task makes from one pass over the corpus."""
    rng = np.random.default_rng([seed, task.task_id])
    examples = list(task.corpus_examples(rng, corpus))
    for i in tqdm(range(len(corpus)), desc=task.name, leave=False, unit="doc"):
        examples.extend(task.examples(corpus.tokenized(i), rng, corpus))
    return examples


def report(args: argparse.Namespace) -> int:
    """Build, summarise and print samples."""
    from ernie_style.corpus.language import corpus_language
    from ernie_style.corpus.prepared import load_corpus

    dataset = load_corpus(args.corpus)
    if args.max_documents:
        dataset = dataset.select(range(min(args.max_documents, len(dataset))))
    tokenizer = load_tokenizer(args.tokenizer or Path(args.corpus) / "tokenizer")
    corpus = CorpusContext(DocumentSequence(dataset), tokenizer)
    tasks = resolve_tasks(args.tasks, tokenizer, args.max_seq_len, corpus_language(args.corpus))
    print(f"{len(dataset)} documents, tokenizer vocabulary {len(tokenizer)}")
    print(f"{'task':<24} {'examples':>8} {'tokens':>9} {'mean len':>8} {'s':>6}  top labels")
    samples: dict[str, list[Example]] = {}
    for task in tasks:
        start = time.perf_counter()
        examples = build_all(task, corpus, args.seed)
        seconds = time.perf_counter() - start
        tokens = sum(len(e) for e in examples)
        mean = tokens / max(len(examples), 1)
        top = ", ".join(f"{k}:{v}" for k, v in label_counts(examples).most_common(4))
        print(f"{task.name:<24} {len(examples):>8} {tokens:>9} {mean:>8.1f} {seconds:>6.2f}  {top}")
        samples[task.name] = examples[: args.show]
    for name, examples in samples.items():
        for example in examples:
            print(f"\n[{name}] label={describe_labels(example)}")
            print("  " + tokenizer.decode(example.input_ids))
    return 0


def label_counts(examples: list[Example]) -> Counter:
    """How often each label occurs (token tasks: over scored positions)."""
    counts: Counter = Counter()
    for example in examples:
        if isinstance(example.labels, list):
            counts.update(label for label in example.labels if label != IGNORE_INDEX)
        else:
            counts[example.labels] += 1
    return counts


def describe_labels(example: Example) -> str:
    """A short printable form of an example's labels."""
    if isinstance(example.labels, list):
        scored = [label for label in example.labels if label != IGNORE_INDEX]
        return f"{len(scored)} scored tokens {scored[:12]}{'...' if len(scored) > 12 else ''}"
    return str(example.labels)
