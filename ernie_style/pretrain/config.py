"""The `pretrain` run config. Each field's help text is its documentation; shipped YAML files in
configs/pretrain/ are validated against it by a test."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ernie_style.components import balancer_registry
from ernie_style.config import option
from ernie_style.defaults import DEFAULT_HELDOUT_DOCUMENTS, MLM_TASK, Precision
from ernie_style.pretrain.families import ARCHITECTURES
from ernie_style.pretrain.model import MODEL_PRESETS
from ernie_style.pretrain.schedule import (
    CURRICULA,
    ContinualSchedule,
    anti_curriculum_stages,
    auto_allocation,
    explicit_allocation,
    pairwise_stages,
    set_allocation,
)
from ernie_style.train.optim import PretrainOptim


@dataclass
class ModelSection:
    """Encoder architecture."""

    preset: str = option("tiny", "encoder size: micro (tests) | tiny | small | base | large")
    architecture: str = option(
        "ernie",
        "encoder family: ernie | bert | roberta | xlm-roberta | deberta-v2 | modernbert | "
        "electra | auto (with init_from: the checkpoint's own model_type)",
    )
    init_from: str | None = option(
        None,
        "local encoder to start from: a release, an ERNIE or a BERT-family HF directory (its "
        "architecture replaces the preset; use its tokenizer as data.tokenizer)",
    )
    max_position_embeddings: int = option(512, "longest sequence the position table holds")
    dropout: float = option(0.1, "hidden and attention dropout")
    attn_implementation: str = option(
        "auto", "attention kernel: auto (ernie_cpu on CPU, sdpa on GPU) | sdpa | eager | ernie_cpu"
    )
    pack_sequences: bool = option(
        True, "pack short examples into shared rows (block-diagonal attention), no padding work"
    )

    def validate(self) -> None:
        """Check the preset name and ranges."""
        if self.preset not in MODEL_PRESETS:
            raise ValueError(f"model.preset {self.preset!r} is not one of {list(MODEL_PRESETS)}")
        families = ("ernie", "auto", *ARCHITECTURES)
        if self.architecture not in families:
            raise ValueError(
                f"model.architecture {self.architecture!r} is not one of {', '.join(families)}"
            )
        if self.attn_implementation not in ("auto", "sdpa", "eager", "ernie_cpu"):
            raise ValueError(
                f"model.attn_implementation {self.attn_implementation!r} is not one of "
                "auto, sdpa, eager, ernie_cpu"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class DataSection:
    """Where examples come from."""

    corpus: str = option("", "output directory of `ernie-style prepare`")
    tokenizer: str | None = option(None, "HF tokenizer directory (default: CORPUS/tokenizer)")
    max_seq_len: int = option(128, "tokens per example, special tokens included")
    heldout_documents: int = option(
        DEFAULT_HELDOUT_DOCUMENTS, "documents kept out of training for held-out evaluation"
    )
    index_dir: str | None = option(
        None,
        "where token tables and task indexes (BM25) are built once and memory-mapped "
        "(default: CORPUS/indexes; may be shared storage)",
    )
    num_workers: int = option(
        1,
        "loader worker processes per training process building its share of each step (0 = "
        "in the training process; 0 and 1 give the same batches)",
    )
    prefetch_factor: int = option(4, "steps each loader worker builds ahead")

    def validate(self) -> None:
        """Check ranges."""
        if not self.corpus:
            raise ValueError("data.corpus is required (a directory written by `prepare`)")
        if self.max_seq_len < 16:
            raise ValueError(f"data.max_seq_len must be >= 16, got {self.max_seq_len}")
        if self.heldout_documents < 0:
            raise ValueError("data.heldout_documents must be >= 0")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.prefetch_factor < 1:
            raise ValueError(f"data.prefetch_factor must be >= 1, got {self.prefetch_factor}")


@dataclass
class TaskSection:
    """One task of the run."""

    budget: int = option(0, "iterations (steps) this task trains over the whole run")
    first_stage: int | None = option(None, "stage (1-based) the task joins; default: its order")
    allocation: list[int] | None = option(None, "explicit iterations per stage (replaces auto)")
    options: dict[str, Any] = option({}, "task-specific options (see `ernie-style tasks`)")


@dataclass
class ScheduleSection:
    """How tasks are introduced and sampled."""

    mixed_batches: bool = option(False, "several tasks per step (each a sub-batch) instead of one")
    tasks_per_step: int = option(2, "with mixed_batches: tasks sampled per step")
    mlm_every_step: bool = option(False, "add a knowledge-masking batch to every step")
    restart_warmup_each_stage: bool | None = option(
        None,
        "LR warm-up and decay restart at each stage (unset: yes from scratch, as ERNIE 2.0; no "
        "with model.init_from: one warm-up and decay over the run)",
    )
    stages: str | list[list[str]] | None = option(
        None,
        "curriculum: none = ERNIE's growth (each task joins at its first_stage and stays); "
        "pairwise = each task alone, then every pair, then all; anti_curriculum = "
        "first_stage_tasks alone, then all; or a list of task sets, one per stage. Budgets are "
        "spread as for the growth schedule",
    )
    first_stage_tasks: list[str] | None = option(
        None, "with stages: anti_curriculum, the hardest task(s), trained alone first"
    )

    def stage_sets(self, tasks: list[str]) -> list[list[str]] | None:
        """The task set of every stage for `stages` (None: the growth schedule); errors name
        the key."""
        if self.first_stage_tasks is not None and self.stages != "anti_curriculum":
            raise ValueError("schedule.first_stage_tasks is only for stages: anti_curriculum")
        if self.stages is None:
            return None
        if isinstance(self.stages, str):
            if self.stages == "pairwise":
                return pairwise_stages(tasks)
            if self.stages == "anti_curriculum":
                if not self.first_stage_tasks:
                    raise ValueError(
                        "schedule.first_stage_tasks: name the task(s) that anti_curriculum "
                        "trains first"
                    )
                try:
                    return anti_curriculum_stages(tasks, self.first_stage_tasks)
                except ValueError as error:
                    raise ValueError(f"schedule.first_stage_tasks: {error}") from error
            raise ValueError(
                f"schedule.stages: unknown curriculum {self.stages!r}; choose one of "
                f"{', '.join(CURRICULA)} or give a list of task sets"
            )
        return _checked_stage_sets(self.stages, tasks)


def _checked_stage_sets(stages: list[list[str]], tasks: list[str]) -> list[list[str]]:
    if not stages:
        raise ValueError("schedule.stages: the list of task sets is empty")
    for s, stage in enumerate(stages):
        key = f"schedule.stages[{s}]"
        if not stage:
            raise ValueError(f"{key}: a stage needs at least one task")
        unknown = [t for t in stage if t not in tasks]
        if unknown:
            raise ValueError(f"{key}: {unknown} not in tasks ({', '.join(tasks)})")
        if len(set(stage)) != len(stage):
            raise ValueError(f"{key}: a task is listed twice in {stage}")
    missing = [t for t in tasks if not any(t in stage for stage in stages)]
    if missing:
        raise ValueError(f"schedule.stages: tasks {missing} are in no stage (their budget unused)")
    return [list(stage) for stage in stages]


#: Values `PretrainConfig` chooses for optimizer and schedule keys left unset, from scratch and
#: when continuing a trained encoder (`model.init_from`). Continued pretraining follows
#: domain-adaptive pretraining (Gururangan et al., 2020: peak 1e-4, a warm-up share of the run)
#: instead of a from-scratch peak that would move a trained encoder far in its first steps.
SCRATCH_DEFAULTS: dict[str, Any] = {
    "optim.lr": 5e-4,
    "optim.warmup_steps": 100,
    "schedule.restart_warmup_each_stage": True,
}
CONTINUED_DEFAULTS: dict[str, Any] = {
    "optim.lr": 1e-4,
    "optim.warmup_ratio": 0.1,
    "schedule.restart_warmup_each_stage": False,
}


@dataclass
class PretrainConfig:
    """A continual multi-task pretraining run."""

    output_dir: str = option("runs/pretrain", "run directory: checkpoints, logs, plots")
    seed: int = option(0, "seed for data order, task sampling, masking and dropout")
    batch_size: int = option(32, "global batch size (examples per step over all processes)")
    precision: Precision = option(
        "auto",
        "auto (bf16 where native, else fp32) | bf16 | fp16 (GPU) | fp32 (alias: no)",
    )
    model: ModelSection = option(default_factory=ModelSection, help="encoder")
    data: DataSection = option(default_factory=DataSection, help="corpus and tokenizer")
    tasks: dict[str, TaskSection] = option({}, "task name -> budget/options, in order of entry")
    schedule: ScheduleSection = option(default_factory=ScheduleSection, help="task schedule")
    optim: PretrainOptim = option(default_factory=PretrainOptim, help="optimizer (shared keys)")
    checkpoint_every: int = option(500, "save a checkpoint every N steps (and at stage ends)")
    keep_checkpoints: int = option(3, "how many recent checkpoints to keep")
    eval_every: int = option(200, "held-out evaluation every N steps (and at stage ends)")
    eval_batches: int = option(2, "held-out batches per task per evaluation")
    log_every: int = option(10, "TensorBoard/progress-bar update interval in steps")
    max_nonfinite_steps: int = option(5, "stop after this many NaN/inf losses in a row")
    num_workers_threads: int = option(0, "torch intra-op threads (0 = torch default)")
    balancing: str = option(
        "equal", "loss balancing across tasks: a registered balancer (docs/loss_balancing.md)"
    )
    balancing_options: dict[str, Any] = option(
        {},
        "options of the balancing strategy: the fields of its Config, checked at load; dwa "
        "windows and dtp KPIs (held-out accuracy) follow eval_every",
    )
    deepspeed: str | None = option(
        None, "DeepSpeed JSON for torchrun launches (accelerate launches name it in their config)"
    )

    def validate(self) -> None:
        """Checks that need several fields; task names are checked against the registry. Fills
        the optimizer and schedule keys left unset (`chosen_defaults` lists them)."""
        from ernie_style.pretrain.registry import registered_tasks

        self._choose_unset_defaults()
        if not self.tasks:
            raise ValueError("tasks: at least one task is required")
        registered = registered_tasks()
        for name in self.tasks:
            if name not in registered:
                raise ValueError(
                    f"tasks.{name}: unknown task; registered tasks: {', '.join(registered)}"
                )
        self._leave_out_unusable_tasks(registered)
        for name, section in self.tasks.items():
            if section.allocation is None and section.budget <= 0:
                raise ValueError(f"tasks.{name}.budget must be > 0, got {section.budget}")
            if section.allocation is not None and (
                any(n < 0 for n in section.allocation) or sum(section.allocation) <= 0
            ):
                raise ValueError(f"tasks.{name}.allocation must be >= 0 with a positive total")
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {self.batch_size}")
        if self.optim.grad_accum_steps <= 0:
            raise ValueError("optim.grad_accum_steps must be > 0")
        if self.balancing not in balancer_registry.names():
            valid = ", ".join(balancer_registry.names())
            raise ValueError(f"balancing: unknown strategy {self.balancing!r}; valid: {valid}")
        self.balancing_config()
        if self.schedule.stages is not None:
            for name, section in self.tasks.items():
                for key in ("first_stage", "allocation"):
                    if getattr(section, key) is not None:
                        raise ValueError(
                            f"tasks.{name}.{key}: schedule.stages sets the stages; drop one"
                        )
        self.schedule.stage_sets(list(self.tasks))
        if self.schedule.mlm_every_step and MLM_TASK not in self.tasks:
            raise ValueError(f"schedule.mlm_every_step needs {MLM_TASK} in tasks")

    def _leave_out_unusable_tasks(self, registered: dict[str, Any]) -> None:
        """Drop the tasks that have nothing to learn in the corpus language (`unusable_in`),
        recording why in `left_out`; refused when no task would be left."""
        from ernie_style.corpus.language import corpus_language

        language = corpus_language(self.data.corpus) if self.data.corpus else "en"
        self.corpus_language = language
        self.left_out = {
            **getattr(self, "left_out", {}),
            **{
                name: registered[name].unusable_in[language]
                for name in self.tasks
                if language in registered[name].unusable_in
            },
        }
        if self.tasks and set(self.tasks) <= set(self.left_out):
            reasons = "; ".join(f"{name}: {why}" for name, why in self.left_out.items())
            raise ValueError(
                f"tasks: nothing to train on this {language} corpus ({reasons}); add a task "
                "that reads it, e.g. knowledge_masking"
            )
        self.tasks = {n: s for n, s in self.tasks.items() if n not in self.left_out}

    def describe_left_out(self) -> str:
        """One line naming the tasks left out for the corpus language and why ('' if none)."""
        left_out = getattr(self, "left_out", {})
        if not left_out:
            return ""
        reasons = "; ".join(f"{name} ({why})" for name, why in left_out.items())
        return f"left out of the schedule on this {self.corpus_language} corpus: {reasons}"

    def _choose_unset_defaults(self) -> None:
        """From-scratch or continued-pretraining values for unset keys; explicit settings win."""
        defaults = CONTINUED_DEFAULTS if self.model.init_from else SCRATCH_DEFAULTS
        unset = []
        if self.optim.lr is None:
            unset.append("optim.lr")
        if self.optim.warmup_steps is None and self.optim.warmup_ratio is None:
            unset += [key for key in defaults if key.startswith("optim.warmup")]
        if self.schedule.restart_warmup_each_stage is None:
            unset.append("schedule.restart_warmup_each_stage")
        self.chosen_defaults = {key: defaults[key] for key in unset}
        for key, value in self.chosen_defaults.items():
            section, name = key.split(".")
            setattr(getattr(self, section), name, value)
        if self.optim.warmup_ratio is None:  # warmup_steps is set and wins
            self.optim.warmup_ratio = 0.0

    def describe_defaults(self) -> str:
        """One line saying which unset keys took which values and why ('' if none did)."""
        chosen = getattr(self, "chosen_defaults", {})
        if not chosen:
            return ""
        values = ", ".join(f"{key}={value}" for key, value in chosen.items())
        if self.model.init_from:
            return (
                f"continued-pretraining defaults (model.init_from is set): {values}; a trained "
                "encoder takes a lower peak LR and one warm-up over the run, so its first steps "
                "stay close to the checkpoint (from scratch: optim.lr=5e-4, 100 warm-up steps "
                "restarted at each stage). Set these keys to override."
            )
        return f"from-scratch pretraining defaults: {values}. Set these keys to override."

    def balancing_config(self) -> Any:
        """`balancing_options` as the balancing strategy's typed `Config` (errors name the
        dotted key, e.g. `balancing_options.temprature`)."""
        return balancer_registry.parse(self.balancing, self.balancing_options, "balancing_options")

    def build_schedule(self) -> ContinualSchedule:
        """The stage plan: explicit allocations if any task gives one, else ERNIE's auto."""
        per_step = self.schedule.tasks_per_step if self.schedule.mixed_batches else 1
        explicit = {n: s.allocation for n, s in self.tasks.items() if s.allocation is not None}
        if explicit:
            if len(explicit) != len(self.tasks):
                missing = sorted(set(self.tasks) - set(explicit))
                raise ValueError(f"tasks {missing}: give an allocation to every task or to none")
            return ContinualSchedule(explicit_allocation(explicit), self.seed, per_step)
        budgets = {name: s.budget for name, s in self.tasks.items()}
        sets = self.schedule.stage_sets(list(self.tasks))
        if sets is not None:
            return ContinualSchedule(set_allocation(budgets, sets), self.seed, per_step)
        first = {}
        for order, (name, section) in enumerate(self.tasks.items()):
            first[name] = (section.first_stage - 1) if section.first_stage else order
        num_stages = max(first.values()) + 1
        return ContinualSchedule(auto_allocation(budgets, first, num_stages), self.seed, per_step)
