"""Continued-pretraining masked-LM step per encoder family: ours vs the stock Hugging Face path.

Ours: the pretraining model's masked-LM step as the trainer runs it: `FamilyBackbone` (the
family's stock `*ForMaskedLM` plus ERNIE's zero additions), the model's own head applied at the
masked positions only, cross-entropy, backward, AdamW; each step collates its batch from
knowledge-masking examples built in advance (the loader builds them in other processes).
Stock: `transformers.Trainer` + `AutoModelForMaskedLM` + `DataCollatorForLanguageModeling`
(masking on the fly), the same model and initial weights, AdamW, no logging or saving; its
faster setting: SDPA attention and, for ModernBERT, its `sparse_prediction` (logits at the
masked positions only). Time per step is the median interval between step ends after warm-up,
so the stock side's collation and Trainer loop are counted, as ours are.

    .venv/bin/python bench/family_mlm_step.py [--steps 20] [--families roberta deberta-v2 ...]

Target: ours >= 1.0x the stock step for every family. fp32 on both sides (bf16 is emulated on
AVX2-only CPUs); the header line says which CPU ran it.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from typing import Any

import numpy as np
import torch
from _results import record
from _timing import ForeignLoad, precision_header

SIZES = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}
BATCH, SEQ_LEN, WARMUP = 16, 128, 3


def _texts() -> list[str]:
    from ernie_style.testing.families import sample_texts

    return sample_texts(100)


def _our_steps(config: Any, tokenizer: Any, documents: list, steps: int) -> list[float]:
    """Step-end times of our masked-LM step."""
    from ernie_style.pretrain.examples import CorpusContext, collate
    from ernie_style.pretrain.families import build_family_backbone
    from ernie_style.pretrain.model import ErniePretrainingModel
    from pretrain_tasks.knowledge_masking import KnowledgeMasking

    torch.manual_seed(0)
    task = KnowledgeMasking(tokenizer, max_seq_len=SEQ_LEN)
    model = ErniePretrainingModel(build_family_backbone(config), {task.name: task}).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    corpus = CorpusContext(documents, tokenizer)
    rng = np.random.default_rng(0)
    examples = [
        e for i in range(len(corpus)) for e in task.examples(corpus.tokenized(i), rng, corpus)
    ]
    ends = []
    for step in range(WARMUP + steps):
        first = (step * BATCH) % max(len(examples) - BATCH, 1)
        batch = collate(examples[first : first + BATCH], tokenizer.pad_token_id)
        output = model(batch)
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        optimizer.step()
        ends.append(time.perf_counter())
    return ends[WARMUP:]


class _StepEnds:
    """A TrainerCallback recording when each step ends."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        ends: list[float] = []
        self.ends = ends

        class Callback(TrainerCallback):
            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                ends.append(time.perf_counter())

        self.callback = Callback()


def _stock_steps(
    config: Any, tokenizer: Any, texts: list[str], steps: int, out: str
) -> list[float]:
    """Step-end times of the stock Trainer on the same model."""
    from datasets import Dataset
    from transformers import (
        AutoModelForMaskedLM,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
    )

    torch.manual_seed(0)
    if config.model_type == "modernbert":
        config.sparse_prediction = True  # the stock faster setting
    model = AutoModelForMaskedLM.from_config(config, trust_remote_code=False)
    encoded = tokenizer(texts, truncation=True, max_length=SEQ_LEN, return_special_tokens_mask=True)
    dataset = Dataset.from_dict(dict(encoded))
    args = TrainingArguments(
        output_dir=out,
        per_device_train_batch_size=BATCH,
        max_steps=WARMUP + steps,
        learning_rate=1e-4,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    recorder = _StepEnds()
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        callbacks=[recorder.callback],
    )
    trainer.train()
    return recorder.ends[WARMUP:]


def _median_step(ends: list[float]) -> float:
    return statistics.median(b - a for a, b in itertools.pairwise(ends))


def main() -> None:
    """Print one row per family and record each ratio."""
    import tempfile

    from ernie_style.corpus.annotate import RawDocument, RegexAnnotator
    from ernie_style.pretrain.families import ARCHITECTURES, family_config
    from ernie_style.testing.families import FAMILY_TOKENIZERS, train_family_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--families", nargs="+", default=list(ARCHITECTURES))
    args = parser.parse_args()
    _, header = precision_header("fp32")
    print(header)
    texts = _texts()
    annotator = RegexAnnotator()
    documents = [annotator.annotate_one(RawDocument(f"d{i}", "", t)) for i, t in enumerate(texts)]
    print(f"model: {SIZES}, batch {BATCH} x {SEQ_LEN} tokens, fp32, median of {args.steps} steps")
    print(f"{'family':<12} {'ours s/step':>12} {'stock s/step':>13} {'ours/stock speed':>17}")
    for family in args.families:
        tokenizer = train_family_tokenizer(FAMILY_TOKENIZERS[family], texts, vocab_size=8000)
        sizes = SIZES | {"intermediate_size": 4 * SIZES["hidden_size"]}
        config = family_config(
            family, sizes, tokenizer, max_position_embeddings=SEQ_LEN, dropout=0.1
        )
        with ForeignLoad() as load, tempfile.TemporaryDirectory() as out:
            ours = _median_step(_our_steps(config, tokenizer, documents, args.steps))
            stock = _median_step(_stock_steps(config, tokenizer, texts, args.steps, out))
        ratio = stock / ours
        busy = f" (other processes used {load.cores:.2f} cores)" if load.cores else ""
        print(f"{family:<12} {ours:>12.4f} {stock:>13.4f} {ratio:>16.2f}x{busy}")
        record(f"mlm_step_{family}_vs_stock_trainer", ratio, ">= 1.0", ratio >= 1.0)


if __name__ == "__main__":
    main()
