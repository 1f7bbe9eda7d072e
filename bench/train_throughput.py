"""Training throughput: our seven-task ERNIE 2.0 step vs. stock Hugging Face masked-LM training.

Measured in one run, on one prepared corpus (`ernie-style prepare --annotator none
--train-tokenizer 30522` of the bundled Wikipedia sample), same encoder size for both sides
(hidden 512, 4 layers, 8 heads, intermediate 2048, vocabulary 30522), sequence 128, batch 32,
each side in its fastest precision on the machine it runs on (bf16 autocast where the CPU
runs bf16 natively, fp32 where bf16 is only emulated: `ernie_style.precision`),
`torch.set_num_threads(2)`:

(a) ours: `PretrainTrainer` with all seven registered tasks active in one stage (each step
    samples one task by remaining budget, as in the continual schedule's late stages), driven
    through the trainer's own `next_batches()` (task sampling, example construction, collation)
    and `train_step()` (accelerate autocast forward in the `precision: auto` choice, backward,
    NaN check, grad clipping, AdamW) in a timed loop. The model size is not reachable through
    the config (model presets only), so `ernie_style.pretrain.state.build_backbone_config` is
    wrapped while the trainer is built: it gets the size overrides above and everything else
    is the real code path.
(b) stock `transformers.BertForMaskedLM` + `DataCollatorForLanguageModeling` (15% masking)
    trained by `transformers.Trainer` with its fastest CPU settings: bf16=True where bf16 is
    native (fp32 elsewhere), use_cpu=True, fused AdamW (the default), in-process data loading
    (no workers on 2 cores), no evaluation, no checkpoints, no logging, report_to none; eager
    and with torch_compile in the first repeat, then only the faster of the two. The
    corpus text is tokenized with the same tokenizer and grouped into 128-token blocks
    (run_mlm style), so (b) has no padding at all.

Reported for each: tokens/s (non-padding input tokens: `attention_mask.sum()` of every micro-
batch for (a), exactly what the trainer logs; the lengths of the unpadded 128-token blocks for
(b)), steps/s, the ratio (a)/(b) (target >= 2.0), model FLOP utilisation against a measured
matmul peak in the precision used, and for (a) the fraction of the step spent waiting for data in
`next_batches` (target < 5%).

FLOPs (training = forward + backward = 3x forward = 6 FLOPs per parameter per token):

    per non-padding token   6 * N_enc + 12 * L * H * W
    per scored item         6 * (head parameters) [+ 6 * H * V for a masked-LM head, whose
                            decoder is tied to the embeddings] [+ 6 * H^2 pooler, sequence tasks]

N_enc = parameters of the L transformer layers (embedding lookups are free), H = hidden size,
W = padded width of the batch (attention scores and context: 2 matmuls of 2*W*H FLOPs per token
and layer forward, x3 for training), V = vocabulary. A scored item is a labelled token (token
tasks) or an example (sequence tasks). (b) scores all 128 positions with the LM head (6 * (H^2 +
H * V) per token), which is what BertForMaskedLM computes. MFU counts only non-padding tokens;
"HFU" counts the padded positions the hardware actually computed.

The machine may be shared: each section reports the CPU other processes used meanwhile
(`foreign load`); numbers taken under foreign load > 0.1 cores are not comparable. Use
`--wait-quiet S` to wait up to S seconds for a quiet machine before each timed section.

    .venv/bin/python bench/train_throughput.py [--steps N] [--hf-steps N] [--no-compile]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from _results import record
from _timing import ForeignLoad, matmul_peak, precision_header, wait_for_quiet

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample_corpus" / "wiki_sample.jsonl"

# The run config of the issue.
HIDDEN, LAYERS, HEADS, INTERMEDIATE, VOCAB = 512, 4, 8, 2048, 30522
IGNORE_INDEX = -100


@dataclass
class Section:
    """What one timed section measured."""

    name: str
    steps: int = 0
    seconds: float = 0.0
    tokens: int = 0
    padded_tokens: int = 0
    flops: float = 0.0
    data_seconds: float | None = None
    step_times: list[float] = field(default_factory=list)
    foreign_cores: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        """Non-padding input tokens per second."""
        return self.tokens / self.seconds

    @property
    def steps_per_s(self) -> float:
        """Optimizer steps per second."""
        return self.steps / self.seconds


# ---- setup ------------------------------------------------------------------------------
def prepared_corpus(out: Path, vocab: int) -> Path:
    """Prepare the sample corpus once (no annotator; the fingerprint makes re-runs instant)."""
    cmd = [sys.executable, "-m", "ernie_style", "prepare", "--input", str(SAMPLE)]
    cmd += ["--output", str(out), "--annotator", "none", "--train-tokenizer", str(vocab)]
    out.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"preparing the corpus failed:\n{done.stdout}{done.stderr}")
    return out


@contextlib.contextmanager
def backbone_size(hidden: int, layers: int, heads: int, intermediate: int, vocab: int) -> Iterator:
    """While open, `build_run_state` builds a backbone of this size.

    `PretrainConfig.model` only names a preset, so the module-level `build_backbone_config` that
    `run_state._build_backbone` calls is wrapped: the preset's sizes and the vocabulary are
    overridden, every other argument (padding id, positions, dropout, task embeddings, attention
    implementation) comes from the config as usual.
    """
    from ernie_style.pretrain import state as run_state

    original = run_state.build_backbone_config

    def build(preset: str, vocab_size: int, **kwargs: Any) -> Any:
        if vocab < vocab_size:
            raise ValueError(f"--vocab {vocab} is smaller than the tokenizer ({vocab_size})")
        sizes = {
            "hidden_size": hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "intermediate_size": intermediate,
        }
        return original(preset, vocab_size=vocab, **kwargs, **sizes)

    run_state.build_backbone_config = build
    try:
        yield
    finally:
        run_state.build_backbone_config = original


def quiet(args: argparse.Namespace, what: str) -> None:
    """Optionally wait for other processes to stop using the CPU."""
    if args.wait_quiet > 0:
        waited = wait_for_quiet(args.wait_quiet)
        state = f"after {waited:.0f}s" if waited is not None else "gave up: still busy"
        print(f"  [{what}: waited for a quiet machine, {state}]", flush=True)


# ---- (a) ours -----------------------------------------------------------------------------
def encoder_params(backbone: torch.nn.Module) -> int:
    """Parameters of the transformer layers (what every token multiplies through)."""
    return sum(p.numel() for p in backbone.encoder.parameters())


def computed_positions(model: Any, batch: dict) -> int:
    """Positions the encoder computes for a batch: its padded size, or the packed rows'."""
    from ernie_style.pretrain.packing import plan_packing

    plan = plan_packing(batch["attention_mask"]) if model.pack_sequences else None
    if plan is None or not plan.worthwhile:
        return batch["attention_mask"].numel()
    return len(plan.rows) * plan.packed_width


def ours_step_flops(model: Any, batches: dict[str, list[dict]]) -> tuple[float, int, int]:
    """(FLOPs, non-padding tokens, padded tokens) of one step's micro-batches (see module doc)."""
    from ernie_style.pretrain.heads import MaskedLMHead

    config = model.backbone.config
    hidden, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    per_token_dense = 6 * encoder_params(model.backbone)
    flops, tokens, padded = 0.0, 0, 0
    for task, micro in batches.items():
        head = model.heads[task]
        head_params = sum(p.numel() for p in head.parameters())
        for batch in micro:
            mask, labels = batch["attention_mask"], batch["labels"]
            n_tokens, width = int(mask.sum()), mask.shape[1]
            tokens += n_tokens
            padded += computed_positions(model, batch)
            flops += n_tokens * (per_token_dense + 12 * layers * hidden * width)
            if labels.dim() == 2:  # token task: labelled positions only
                items, extra = int((labels != IGNORE_INDEX).sum()), 0
            else:  # sequence task: one item per example, through the pooler
                items, extra = labels.numel(), 6 * hidden * hidden
            if isinstance(head, MaskedLMHead):
                extra += 6 * hidden * vocab
            flops += items * (6 * head_params + extra)
    return flops, tokens, padded


def run_ours(args: argparse.Namespace, corpus: Path, workdir: Path) -> tuple[Section, dict]:
    """Time the trainer's `next_batches` + `train_step` over all seven tasks."""
    from ernie_style.config import load_config
    from ernie_style.pretrain.config import PretrainConfig
    from ernie_style.pretrain.registry import registered_tasks
    from ernie_style.pretrain.trainer import PretrainTrainer

    tasks = list(registered_tasks())
    overrides = [
        f"data.corpus={corpus}",
        f"output_dir={workdir / 'ours'}",
        f"batch_size={args.batch_size}",
        "precision=auto",
        f"data.max_seq_len={args.seq_len}",
        f"num_workers_threads={args.threads}",
        "model.preset=small",  # sizes replaced by backbone_size(); dropout etc. from the config
    ]
    # All seven tasks in one stage (explicit allocation), budgets far beyond the timed steps.
    overrides += [f"tasks.{name}.allocation=[1000000]" for name in tasks]
    overrides += args.override
    config = load_config(PretrainConfig, None, overrides)
    with backbone_size(HIDDEN, LAYERS, HEADS, INTERMEDIATE, args.vocab):
        trainer = PretrainTrainer(config)
    torch.set_num_threads(args.threads)
    trainer.before_training()  # starts the data loader, as train() does
    model = trainer.state.model
    info = {
        "params": sum(p.numel() for p in model.parameters()),
        "encoder_params": encoder_params(model.backbone),
        "attn": model.backbone.config._attn_implementation,
        "tasks": tasks,
        "optimizer": type(trainer.state.optimizer).__name__,
        "optimizer_mode": _optimizer_mode(trainer.state.optimizer),
    }

    def one_step(section: Section | None, per_task: dict | None) -> set[str]:
        step = trainer.state.schedule.step
        start = time.perf_counter()
        batches = trainer.next_batches(step)
        fetched = time.perf_counter()
        trainer.train_step(step, batches)
        done = time.perf_counter()
        if section is not None and per_task is not None:
            flops, tokens, padded = ours_step_flops(model, batches)
            section.steps += 1
            section.seconds += done - start
            section.data_seconds = (section.data_seconds or 0.0) + fetched - start
            section.tokens += tokens
            section.padded_tokens += padded
            section.flops += flops
            section.step_times.append(done - start)
            for task in batches:
                row = per_task.setdefault(task, [0, 0.0, 0, 0])
                row[0] += 1
                row[1] += done - start
                row[2] += tokens
                row[3] += padded
        return set(batches)

    # Warm-up: at least --warmup steps and every task once (BM25 index, kernel selection).
    seen: set[str] = set()
    warm = 0
    while warm < args.warmup or (seen != set(tasks) and warm < args.warmup + 60):
        seen |= one_step(None, None)
        warm += 1
    quiet(args, "ours")
    section = Section("(a) ernie-style seven-task step")
    per_task: dict[str, list] = {}
    with ForeignLoad() as load:
        for _ in range(args.steps):
            one_step(section, per_task)
    section.foreign_cores = load.cores
    info["warmup_steps"] = warm
    info["per_task"] = per_task
    return section, info


def _optimizer_mode(optimizer: torch.optim.Optimizer) -> str:
    group = optimizer.param_groups[0]
    if group.get("fused"):
        return "fused"
    if group.get("foreach"):
        return "foreach"
    return "default (single-tensor loop on CPU)" if group.get("foreach") is None else "for-loop"


# ---- (b) stock Hugging Face ---------------------------------------------------------------
def grouped_blocks(corpus: Path, tokenizer: Any, seq_len: int) -> list[list[int]]:
    """The corpus text tokenized ([CLS] doc [SEP] per document) and cut into seq_len blocks."""
    from ernie_style.corpus.prepared import load_corpus

    texts = list(load_corpus(corpus)["text"])
    ids = tokenizer(texts, add_special_tokens=True, return_attention_mask=False)["input_ids"]
    flat = [t for doc in ids for t in doc]
    return [flat[i : i + seq_len] for i in range(0, len(flat) - seq_len + 1, seq_len)]


def run_hf(
    args: argparse.Namespace, corpus: Path, workdir: Path, compile_model: bool
) -> tuple[Section, dict]:
    """Time `transformers.Trainer` on BertForMaskedLM (steps after the warm-up)."""
    import datasets
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from ernie_style.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(corpus / "tokenizer")
    blocks = grouped_blocks(corpus, tokenizer, args.seq_len)
    warmup, steps = args.hf_warmup, args.hf_steps
    needed = (warmup + steps) * args.batch_size
    if len(blocks) < needed:
        blocks = (blocks * (needed // len(blocks) + 1))[:needed]
    dataset = datasets.Dataset.from_dict({"input_ids": blocks})
    masking = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm_probability=0.15)
    batch_tokens: list[int] = []
    collate_seconds = [0.0]

    def collate(features: list[dict]) -> dict:
        start = time.perf_counter()
        batch = masking(features)
        collate_seconds[0] += time.perf_counter() - start
        batch_tokens.append(sum(len(f["input_ids"]) for f in features))  # no padding here
        return batch

    ends: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, *_: Any, **__: Any) -> None:
            ends.append(time.perf_counter())

        def on_step_begin(self, _args: Any, state: Any, *__: Any, **___: Any) -> None:
            if state.global_step == warmup:
                quiet(args, "hf")
                ends.append(time.perf_counter())  # start of the timed window
                collate_seconds[0] = 0.0
                self.load = ForeignLoad().__enter__()

    clock = StepClock()
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=args.vocab,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = BertForMaskedLM(config)
    training_args = TrainingArguments(
        output_dir=str(workdir / ("hf_compiled" if compile_model else "hf")),
        per_device_train_batch_size=args.batch_size,
        max_steps=warmup + steps,
        learning_rate=5e-4,
        bf16=args.bf16,
        use_cpu=True,
        optim="adamw_torch_fused",
        torch_compile=compile_model,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        dataloader_drop_last=True,
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=collate,
        callbacks=[clock],
    )
    torch.set_num_threads(args.threads)
    trainer.train()
    clock.load.__exit__(None, None, None)
    name = "(b) HF Trainer BertForMaskedLM" + (" torch_compile" if compile_model else " eager")
    timed = ends[-(steps + 1) :]  # window start, then one entry per timed step
    section = Section(name, steps=steps, seconds=timed[-1] - timed[0])
    section.step_times = [b - a for a, b in itertools.pairwise(timed)]
    section.tokens = sum(batch_tokens[warmup : warmup + steps])
    section.padded_tokens = steps * args.batch_size * args.seq_len
    section.data_seconds = collate_seconds[0]
    section.foreign_cores = clock.load.cores
    dense = 6 * encoder_params(model.bert) + 12 * LAYERS * HIDDEN * args.seq_len
    head = 6 * (HIDDEN * HIDDEN + HIDDEN * args.vocab)
    section.flops = section.tokens * (dense + head)
    info = {
        "params": sum(p.numel() for p in model.parameters()),
        "attn": model.config._attn_implementation,
        "optimizer": training_args.optim,
        "blocks": len(blocks),
    }
    del trainer, model
    gc.collect()
    return section, info


# ---- report -------------------------------------------------------------------------------
def describe(section: Section, peak: float) -> list[str]:
    """The lines of one section's report."""
    times = sorted(section.step_times)
    median = times[len(times) // 2] if times else float("nan")
    fill = section.tokens / section.padded_tokens if section.padded_tokens else float("nan")
    lines = [
        section.name,
        f"  tokens/s        {section.tokens_per_s:>10,.0f}   (non-padding input tokens)",
        f"  steps/s         {section.steps_per_s:>10.3f}   ({section.steps} timed steps, "
        f"{section.seconds:.1f}s; step median {median:.3f}s, min {times[0]:.3f}s)",
        f"  tokens/step     {section.tokens / section.steps:>10,.0f}   (batch fill {fill:.1%} of "
        "padded positions)",
        f"  MFU             {section.flops / section.seconds / peak:>10.1%}   "
        f"({section.flops / section.seconds / 1e9:,.0f} GFLOP/s model FLOPs)",
    ]
    if section.data_seconds is not None:
        lines.append(
            f"  data wait       {section.data_seconds / section.seconds:>10.1%}   of step time"
        )
    load = section.foreign_cores
    if load is not None:
        warn = "  <-- CONTENDED: not comparable" if load > 0.1 else ""
        lines.append(f"  foreign load    {load:>10.2f}   cores used by other processes{warn}")
    lines += [f"  {note}" for note in section.notes]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=60, help="timed steps of (a)")
    parser.add_argument("--warmup", type=int, default=12, help="warm-up steps of (a)")
    parser.add_argument("--hf-steps", type=int, default=20, help="timed steps of (b)")
    parser.add_argument("--hf-warmup", type=int, default=3, help="warm-up steps of (b)")
    parser.add_argument("--no-compile", action="store_true", help="skip (b) with torch_compile")
    parser.add_argument("--skip-hf", action="store_true", help="only (a)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="alternate (a) and compiled (b) this many times; report the median ratio",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=VOCAB, help="model vocabulary (both sides)")
    parser.add_argument("--corpus", type=Path, default=ROOT / "runs" / "bench" / "train_corpus")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra PretrainConfig override for (a), e.g. model.attn_implementation=eager",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="wait up to S seconds for a quiet machine before each timed section",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # Expected with `--annotator none`: knowledge masking falls back to word-level units.
    warnings.filterwarnings("ignore", message=".*has no phrase or entity annotation.*")
    started = time.perf_counter()

    choice, header = precision_header("auto")
    print(header, flush=True)
    args.bf16 = choice.dtype == "bf16"  # the stock side's fastest setting on this machine too
    corpus = prepared_corpus(args.corpus, VOCAB)
    quiet(args, "peak")
    with ForeignLoad() as load:
        peak = matmul_peak(choice.autocast_dtype or torch.float32)
    print(
        f"machine: torch {torch.__version__}, {torch.get_num_threads()} threads; {choice.dtype} "
        f"matmul peak {peak / 1e9:,.0f} GFLOP/s (best torch.mm up to 4096^3, foreign load "
        f"{load.cores if load.cores is not None else float('nan'):.2f} cores); both sides in "
        f"{choice.dtype}",
        flush=True,
    )
    ratios: list[float] = []
    # The first repeat times (b) eager and compiled; later repeats only the faster of the two.
    variants = [False] + ([] if args.no_compile else [True])
    with tempfile.TemporaryDirectory(prefix="train_throughput_") as tmp:
        for repeat in range(args.repeats):
            workdir = Path(tmp) / f"repeat-{repeat}"
            sections, ours_info = measure_once(args, corpus, workdir, variants)
            if len(sections) > 2:
                faster = max(sections[1:], key=lambda s: s.tokens_per_s)
                variants = ["torch_compile" in faster.name]
                print(f"faster stock variant on this machine: {faster.name}", flush=True)
            print(f"\nrepeat {repeat + 1}/{args.repeats}")
            for section in sections:
                print("\n".join(describe(section, peak)))
            ours = sections[0]
            for hf in sections[1:]:
                ratio = ours.tokens_per_s / hf.tokens_per_s
                print(f"ratio (a)/{hf.name[:3]} {hf.name[4:]}: {ratio:.2f}x tokens/s")
            if len(sections) > 1:
                ratios.append(ours.tokens_per_s / max(s.tokens_per_s for s in sections[1:]))
    report(args, ours, ours_info, ratios, peak)
    print(f"benchmark wall time {time.perf_counter() - started:.0f}s")


def measure_once(
    args: argparse.Namespace, corpus: Path, workdir: Path, variants: list[bool]
) -> tuple[list[Section], dict]:
    """(a), then (b) in each of `variants` (False: eager, True: torch_compile)."""
    quiet(args, "(a)")
    ours, ours_info = run_ours(args, corpus, workdir)
    gc.collect()
    print(
        f"(a) {ours_info['params']:,} parameters ({ours_info['encoder_params']:,} in the "
        f"encoder layers), attention {ours_info['attn']}, AdamW "
        f"{ours_info['optimizer_mode']}, {ours_info['warmup_steps']} warm-up steps",
        flush=True,
    )
    sections = [ours]
    if args.skip_hf:
        return sections, ours_info
    for compiled in variants:
        # TrainingArguments(torch_compile=True) exports ACCELERATE_DYNAMO_* for the process,
        # which would make the next repeat's (a) compile our model too: restore the env.
        saved_env = dict(os.environ)
        hf, hf_info = run_hf(args, corpus, workdir, compiled)
        os.environ.clear()
        os.environ.update(saved_env)
        sections.append(hf)
        gc.collect()
    print(
        f"(b) {hf_info['params']:,} parameters, attention {hf_info['attn']}, "
        f"optim {hf_info['optimizer']}, {hf_info['blocks']} blocks of {args.seq_len}",
        flush=True,
    )
    return sections, ours_info


def report(
    args: argparse.Namespace, ours: Section, info: dict, ratios: list[float], peak: float
) -> None:
    """Per-task breakdown of the last (a), the median ratio, data wait and MFU."""
    print("(a) per task: steps, mean step s, tokens/step, batch fill, tokens/s")
    for task, (n, seconds, tokens, padded) in sorted(info["per_task"].items()):
        print(
            f"  {task:<24} {n:>4} {seconds / n:>7.3f}s {tokens / n:>8,.0f} "
            f"{tokens / padded:>7.1%} {tokens / seconds:>9,.0f}"
        )
    if ratios:
        ratio = statistics.median(ratios)
        verdict = "MET" if ratio >= 2.0 else "NOT MET"
        each = ", ".join(f"{r:.2f}x" for r in ratios)
        print(
            f"ratio (a)/(b) against the faster (b): {ratio:.2f}x, median of {len(ratios)} "
            f"alternating repeats ({each}) (target >= 2.0: {verdict})"
        )
        record(
            f"training tokens/s, ours / HF Trainer (faster (b)), {'bf16' if args.bf16 else 'fp32'}",
            ratio,
            ">= 2.0",
            ratio >= 2.0,
            f"median of {len(ratios)} repeats: {each}",
        )
    data_fraction = (ours.data_seconds or 0.0) / ours.seconds
    verdict = "MET" if data_fraction < 0.05 else "NOT MET"
    print(f"(a) data wait: {data_fraction:.1%} of step time (target < 5%: {verdict})")
    record(
        "training data wait (fraction of step time)", data_fraction, "< 5%", data_fraction < 0.05
    )
    mfu = ours.flops / ours.seconds / peak
    record(
        f"training MFU (ours) vs measured {'bf16' if args.bf16 else 'fp32'} matmul peak",
        mfu,
        "reported",
        None,
        f"peak {peak / 1e9:,.0f} GFLOP/s",
    )


if __name__ == "__main__":
    main()
