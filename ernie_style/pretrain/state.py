"""Everything a pretraining run holds, built from its config; continuing from a release.

Checkpoints are written and read by the engine (`ernie_style.train.engine`). Resuming with newly
added tasks: the checkpoint's weights load into a model that also has the new heads (the only
keys allowed to be missing), AdamW state is restored by parameter name (new parameters start
with none), and the schedule keeps the stages the checkpoint had started.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import ErnieModel

from ernie_style.cpu_kernels import CPU_ATTENTION, resolve_attention, use_cpu_kernels
from ernie_style.defaults import MLM_TASK
from ernie_style.pretrain.config import PretrainConfig
from ernie_style.pretrain.examples import CorpusContext, collate
from ernie_style.pretrain.families import (
    FamilyBackbone,
    build_family_backbone,
    family_config,
    load_family_backbone,
    resolve_architecture,
)
from ernie_style.pretrain.indexes import corpus_contexts
from ernie_style.pretrain.init_from import load_encoder_checkpoint
from ernie_style.pretrain.loader import DataStreams, StepLayout
from ernie_style.pretrain.model import (
    MODEL_PRESETS,
    ErniePretrainingModel,
    build_backbone_config,
)
from ernie_style.pretrain.registry import PretrainTask, get_task
from ernie_style.pretrain.schedule import ContinualSchedule
from ernie_style.pretrain.stream import TaskExampleStream
from ernie_style.tokenizer import load_tokenizer
from ernie_style.train.checkpoint import load_tensors
from ernie_style.train.engine import load_weights
from ernie_style.train.optim import build_adamw

#: Backbone config fields that must match between a checkpoint and the run resuming it.
ARCHITECTURE_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
    "task_type_vocab_size",
)


@dataclass
class RunState:
    """The mutable state of a run (model and optimizer are the unwrapped originals)."""

    tokenizer: Any
    train_corpus: CorpusContext
    heldout_corpus: CorpusContext | None
    tasks: dict[str, PretrainTask]
    schedule: ContinualSchedule
    model: ErniePretrainingModel
    optimizer: torch.optim.Optimizer
    #: This process's task streams (one per task and loader slot) and their positions.
    streams: DataStreams
    seed: int
    _heldout: dict[str, list[dict]] = field(default_factory=dict)

    @property
    def pad_id(self) -> int:
        """Padding token id."""
        return int(self.tokenizer.pad_token_id)

    def schedule_tasks_seen(self, stage: int) -> list[str]:
        """Tasks introduced in stages 0..stage."""
        stages = self.schedule.stages[: stage + 1]
        return [t for t in self.schedule.tasks if any(t in s for s in stages)]

    def heldout_batches(self, task: str, n_batches: int, batch_size: int) -> list[dict]:
        """Fixed held-out batches of a task (built once from the held-out documents)."""
        if task not in self._heldout:
            batches = []
            if self.heldout_corpus is not None:
                stream = TaskExampleStream(self.tasks[task], self.heldout_corpus, seed=12345)
                try:
                    examples = stream.take(n_batches * batch_size)
                    batches = [
                        collate(examples[i : i + batch_size], self.pad_id)
                        for i in range(0, len(examples), batch_size)
                    ]
                except ValueError:
                    batches = []  # the held-out documents are too short for this task
            self._heldout[task] = batches
        return self._heldout[task]


def build_run_state(
    config: PretrainConfig,
    device_type: str = "cpu",
    fused_optimizer: bool = False,
    rank: int = 0,
    world: int = 1,
) -> RunState:
    """Tokenizer, corpus split, tasks, schedule, model and optimizer for a fresh run.

    `device_type` picks the attention kernel for `model.attn_implementation: auto`;
    `fused_optimizer` selects torch's fused AdamW (not for DeepSpeed, which wraps the optimizer);
    `rank`/`world` pick this process's data shards.
    """
    from ernie_style.corpus.language import corpus_language
    from ernie_style.corpus.prepared import load_corpus

    tokenizer = load_tokenizer(config.data.tokenizer or Path(config.data.corpus) / "tokenizer")
    dataset = load_corpus(config.data.corpus)
    train_corpus, heldout = corpus_contexts(
        dataset,
        config.data.corpus,
        tokenizer,
        config.data.tokenizer,
        config.data.heldout_documents,
        config.data.index_dir,
    )
    language = corpus_language(config.data.corpus)
    tasks = {
        name: get_task(name)(
            tokenizer, max_seq_len=config.data.max_seq_len, config=s.options, language=language
        )
        for name, s in config.tasks.items()
    }
    # Corpus-level structures: built once on disk (a new task's on first use), then mapped.
    train_corpus.token_table()
    for task in tasks.values():
        task.prepare(train_corpus)
    schedule = config.build_schedule()
    backbone, mlm_head = _build_backbone(config, tokenizer)
    attention = resolve_attention(config.model.attn_implementation, device_type)
    if isinstance(backbone, ErnieModel):  # other families keep their own attention (SDPA)
        if attention == CPU_ATTENTION:
            use_cpu_kernels(backbone)
        else:
            backbone.config._attn_implementation = attention
    model = ErniePretrainingModel(backbone, tasks, pack_sequences=config.model.pack_sequences)
    if mlm_head and MLM_TASK in model.heads:  # the checkpoint's own masked-LM head
        model.heads[MLM_TASK].load_state_dict(mlm_head)
    return RunState(
        tokenizer=tokenizer,
        train_corpus=train_corpus,
        heldout_corpus=heldout,
        tasks=tasks,
        schedule=schedule,
        model=model,
        optimizer=build_optimizer(model, config, fused=fused_optimizer),
        streams=DataStreams(tasks, train_corpus, config.seed, step_layout(config, rank, world)),
        seed=config.seed,
    )


def _build_backbone(
    config: PretrainConfig, tokenizer: Any
) -> tuple[ErnieModel | FamilyBackbone, dict[str, torch.Tensor]]:
    """A fresh backbone of `model.preset`, or the `model.init_from` encoder (its architecture)
    with its masked-LM head weights if it has one."""
    family = resolve_architecture(config.model.architecture, config.model.init_from)
    if family != "ernie":
        return _build_family_backbone(config, tokenizer, family), {}
    if config.model.init_from:
        torch.manual_seed(config.seed)  # what the checkpoint lacks (task embeddings) starts seeded
        backbone, mlm_head = load_encoder_checkpoint(config.model.init_from)
        _check_vocabulary(backbone.config.vocab_size, tokenizer, config.model.init_from)
        return backbone, mlm_head
    torch.manual_seed(config.seed)
    backbone_config = build_backbone_config(
        config.model.preset,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=config.model.max_position_embeddings,
        hidden_dropout_prob=config.model.dropout,
        attention_probs_dropout_prob=config.model.dropout,
    )
    return ErnieModel(backbone_config), {}


def _check_vocabulary(vocab_size: int, tokenizer: Any, init_from: str) -> None:
    """Refuse a `model.init_from` checkpoint whose vocabulary is not the tokenizer's."""
    if vocab_size != len(tokenizer):
        raise ValueError(
            f"model.init_from {init_from}: vocabulary {vocab_size} does not match the tokenizer "
            f"({len(tokenizer)}); set data.tokenizer to the checkpoint's own tokenizer and "
            "prepare the corpus with it"
        )


def _build_family_backbone(config: PretrainConfig, tokenizer: Any, family: str) -> FamilyBackbone:
    """A `FamilyBackbone` of `model.architecture` (sizes of `model.preset`), or of the
    `model.init_from` checkpoint of that family."""
    torch.manual_seed(config.seed)
    if config.model.init_from:
        backbone = load_family_backbone(config.model.init_from)
        if backbone.config.model_type != family:
            raise ValueError(
                f"model.init_from {config.model.init_from}: a {backbone.config.model_type!r} "
                f"checkpoint, but model.architecture is {config.model.architecture!r}"
            )
        _check_vocabulary(backbone.config.vocab_size, tokenizer, config.model.init_from)
        return backbone
    sizes = dict(MODEL_PRESETS[config.model.preset])
    sizes["intermediate_size"] = 4 * sizes["hidden_size"]
    return build_family_backbone(
        family_config(
            family,
            sizes,
            tokenizer,
            max_position_embeddings=config.model.max_position_embeddings,
            dropout=config.model.dropout,
        )
    )


def step_layout(config: PretrainConfig, rank: int = 0, world: int = 1) -> StepLayout:
    """How the config's steps split over tasks, processes, micro-batches and loader slots."""
    mixed = config.schedule.mixed_batches
    return StepLayout(
        batch_size=config.batch_size,
        tasks_per_step=config.schedule.tasks_per_step if mixed else 1,
        mlm_every_step=config.schedule.mlm_every_step,
        grad_accum_steps=config.optim.grad_accum_steps,
        rank=rank,
        world=world,
        num_workers=config.data.num_workers,
    )


def build_optimizer(
    model: torch.nn.Module, config: PretrainConfig, fused: bool = False
) -> torch.optim.AdamW:
    """AdamW from the config's `optim` section (weight decay on weight matrices only);
    `fused` uses torch's single-kernel implementation."""
    return build_adamw(model, config.optim, fused=fused)


def check_compatible(
    state: RunState, source: Path, saved_config: dict[str, Any], saved_tokenizer: str | None
) -> None:
    """Refuse a checkpoint or release whose model size or tokenizer differs from the run's."""
    current = state.model.backbone.config.to_dict()
    diffs = {
        k: (saved_config.get(k), current.get(k))
        for k in ARCHITECTURE_KEYS
        if saved_config.get(k) != current.get(k)
    }
    if diffs:
        detail = ", ".join(f"{k}: checkpoint {a} vs config {b}" for k, (a, b) in diffs.items())
        raise ValueError(f"{source}: model size does not match the config ({detail})")
    if saved_tokenizer != tokenizer_fingerprint(state.tokenizer):
        raise ValueError(
            f"{source}: its tokenizer differs from the configured one "
            f"(vocabulary fingerprint mismatch; vocabulary size now {len(state.tokenizer)})"
        )


def _load_model_weights(
    state: RunState, weights: dict[str, torch.Tensor], old_tasks: set[str], source: Path
) -> list[str]:
    """Load weights; only the heads of tasks new to this run may be missing. Returns them."""
    new_tasks = [t for t in state.tasks if t not in old_tasks]
    missing, unexpected = state.model.load_state_dict(weights, strict=False)
    allowed = tuple(f"heads.{t}." for t in new_tasks)
    bad_missing = [k for k in missing if not k.startswith(allowed)]
    if bad_missing or unexpected:
        raise ValueError(
            f"{source}: weights do not fit this config (missing {bad_missing[:5]}, "
            f"unexpected {unexpected[:5]})"
        )
    return new_tasks


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of the vocabulary (token -> id) and lower-casing setting."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    lowercase = bool(getattr(tokenizer, "do_lower_case", False))
    return hashlib.sha256(json.dumps([lowercase, vocab]).encode("utf-8")).hexdigest()


def load_release(state: RunState, release: Path) -> tuple[list[str], int]:
    """Continue pretraining from a release: encoder weights, the heads of tasks the release
    trained, and its schedule history. AdamW starts fresh (releases carry no optimizer state)
    and data streams start from the beginning of the corpus. Returns the tasks new to this run
    and the tokens the release had trained on.
    """
    from ernie_style.pretrain.export import HEADS_FILE, RELEASE_MARKER

    info = json.loads((release / RELEASE_MARKER).read_text(encoding="utf-8"))
    from ernie_style.tokenizer import load_tokenizer

    saved_config = json.loads((release / "config.json").read_text(encoding="utf-8"))
    if saved_config.get("model_type", "ernie") != "ernie":
        raise ValueError(
            f"--resume {release}: a {saved_config['model_type']} release cannot be resumed yet; "
            f"continue it with model.init_from={release} model.architecture=auto (the task "
            "heads then start fresh)"
        )
    check_compatible(state, release, saved_config, tokenizer_fingerprint(load_tokenizer(release)))
    encoder = load_tensors(release / "model.safetensors")
    weights = {
        "backbone." + k.removeprefix("ernie."): v
        for k, v in encoder.items()
        if k.startswith("ernie.")
    }
    heads = load_tensors(release / HEADS_FILE)
    weights |= {k: v for k, v in heads.items() if k.split(".")[1] in state.tasks}
    new_tasks = [t for t in state.tasks if t not in info["tasks"]]
    load_weights(state.model, weights, [f"heads.{t}." for t in new_tasks], release)
    state.schedule.load_state_dict(info["schedule"])
    return new_tasks, int(info.get("tokens_seen", 0))
