"""The continual multi-task pretraining run, on the shared engine (`ernie_style.train.engine`).

Exact resume by construction: every step reseeds torch from (seed, step), the task sampler is
seeded by (seed, step) and data streams are positional, so a run resumed from a checkpoint
replays the same steps as the uninterrupted run. Each process builds only its own share of a
step, in DataLoader worker processes (`ernie_style.pretrain.loader`); a run resumed on another
number of processes or workers re-shards its data streams without losing or repeating an example.

What pretraining adds to the engine: the run state (corpus, tasks, schedule, model, streams),
the stage-restarted learning rate, DeepSpeed wrapping, the forgetting monitor (held-out loss of
every task seen so far) and, in its checkpoints, the schedule, stream positions and tokenizer.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import DistributedType

from ernie_style.pretrain.config import PretrainConfig
from ernie_style.pretrain.export import RELEASE_MARKER
from ernie_style.pretrain.loader import gather_from_ranks
from ernie_style.pretrain.schedule import StageLR
from ernie_style.pretrain.state import (
    RunState,
    build_run_state,
    check_compatible,
    load_release,
    tokenizer_fingerprint,
)
from ernie_style.train.balancing import LossBalancer, build_balancer
from ernie_style.train.checkpoint import CheckpointWriter
from ernie_style.train.deepspeed_support import fill_auto, is_deepspeed_engine, resolve_config
from ernie_style.train.deepspeed_support import initialize as deepspeed_initialize
from ernie_style.train.engine import LogWindow, TrainEngine


def uses_deepspeed(accelerator: Any, config: PretrainConfig) -> bool:
    """Whether the run trains through DeepSpeed (accelerate plugin or a `deepspeed` JSON)."""
    return accelerator.distributed_type == DistributedType.DEEPSPEED or bool(config.deepspeed)


class PretrainTrainer(TrainEngine):
    """Runs a `PretrainConfig` to the end of its schedule, checkpointing along the way."""

    resume_kind = "checkpoint or release"

    def __init__(self, config: PretrainConfig, resume: str | None = None) -> None:
        super().__init__(config)
        world = self.accelerator.num_processes
        check_batch_divides(config, world)
        if config.num_workers_threads:
            torch.set_num_threads(config.num_workers_threads)
        # The local main process builds missing corpus indexes; the others then map them.
        with self.accelerator.local_main_process_first():
            self.state: RunState = build_run_state(
                config,
                device_type=self.accelerator.device.type,
                fused_optimizer=not uses_deepspeed(self.accelerator, config),
                rank=self.accelerator.process_index,
                world=world,
            )
        self.raw_model, self.raw_optimizer = self.state.model, self.state.optimizer
        self.balancer = self._build_balancer(config)
        self.new_tasks: list[str] = []
        self.data_message: str | None = None
        self._step_stage = 0  # the stage of the step being trained (for the logs)
        checkpoint = self.resolve_resume(resume)
        if checkpoint is not None and (checkpoint / RELEASE_MARKER).is_file():
            self.new_tasks, self.tokens_seen = load_release(self.state, checkpoint)
            self.step = self.state.schedule.step
            self.print(f"continuing from release {checkpoint} at step {self.step}")
            checkpoint = None  # a release has no optimizer state to restore
        self.lr = StageLR(
            self.state.schedule,
            config.optim.warmup_steps,
            config.optim.lr_schedule,
            config.schedule.restart_warmup_each_stage,
            config.optim.warmup_ratio,
        )
        self.finish_setup(checkpoint, self._last_shared_layer())
        if self.data_message:
            self.print(self.data_message)
        if config.describe_defaults():
            self.print(config.describe_defaults())
        if config.describe_left_out():
            self.print(config.describe_left_out())
        self.print(self.precision.describe())
        self.print(f"{self.backend_name()}, {self.state.schedule.total_steps} steps")

    def backend_name(self) -> str:
        """e.g. 'DeepSpeed ZeRO-2 x 2 process(es) on cpu' or 'MULTI_GPU x 8 process(es) on cuda'."""
        accel = self.accelerator
        if is_deepspeed_engine(self.model):
            kind = f"DeepSpeed ZeRO-{self.model.zero_optimization_stage()}"
        else:
            kind = accel.distributed_type.value
        return f"{kind} x {accel.num_processes} process(es) on {accel.device.type}"

    # ---- setup helpers ------------------------------------------------------------------
    def _build_balancer(self, config: PretrainConfig) -> LossBalancer:
        """The loss balancer over the run's tasks; its own parameters join the optimizer."""
        accel = self.accelerator
        reduce = None
        if accel.num_processes > 1:
            reduce = functools.partial(accel.reduce, reduction="mean")
        balancer = build_balancer(
            config.balancing, list(config.tasks), config.balancing_options, reduce
        ).to(accel.device)
        extra = list(balancer.parameters())
        if extra and uses_deepspeed(accel, config):
            raise ValueError(
                f"balancing: {config.balancing} learns parameters outside the model, which "
                "DeepSpeed does not optimize; use equal, fixed, dwa, gradnorm or dtp"
            )
        if extra:
            self.raw_optimizer.add_param_group({"params": extra, "weight_decay": 0.0})
        return balancer

    def _last_shared_layer(self) -> list[torch.nn.Parameter]:
        """The backbone's last transformer layer (GradNorm's gradient norms are taken there)."""
        if self.balancer is None or not self.balancer.needs_shared_parameters:
            return []
        backbone = self.state.model.backbone
        if hasattr(backbone, "last_layer"):  # another encoder family
            return list(backbone.last_layer().parameters())
        return list(backbone.encoder.layer[-1].parameters())

    def wrap(self) -> tuple[Any, Any]:
        """Wrap model and optimizer for the backend: accelerate (plain, DDP, its DeepSpeed
        plugin) or, for torchrun launches with `deepspeed=FILE`, `deepspeed.initialize`."""
        accel, state, config = self.accelerator, self.state, self.config
        world, accum = accel.num_processes, config.optim.grad_accum_steps
        micro = config.batch_size // tasks_per_step(config) // world // accum
        if accel.distributed_type == DistributedType.DEEPSPEED:
            fill_auto(
                accel.state.deepspeed_plugin.deepspeed_config,
                micro,
                accum,
                world,
                config,
                self.precision.dtype,
            )
            model, optimizer = accel.prepare(state.model, state.optimizer)
        elif config.deepspeed:
            ds_config = resolve_config(
                config.deepspeed, micro, accum, world, config, self.precision.dtype
            )
            model = deepspeed_initialize(state.model, state.optimizer, ds_config)
            optimizer = model.optimizer
        else:
            return accel.prepare(state.model, state.optimizer)
        needs_full = self.balancer is not None and self.balancer.needs_shared_parameters
        if needs_full and model.zero_optimization_stage() == 3:
            raise ValueError("balancing: gradnorm needs full weights; not with DeepSpeed ZeRO-3")
        return model, optimizer

    # ---- the engine's hooks -------------------------------------------------------------
    @property
    def total_steps(self) -> int:
        """Steps of the whole continual schedule."""
        return self.state.schedule.total_steps

    def before_training(self) -> None:
        """Start the data loader (its workers follow their own copy of the schedule)."""
        self._batches = iter(
            self.state.streams.loader(
                self.state.schedule, self.state.pad_id, self.config.data.prefetch_factor
            )
        )

    def after_training(self) -> None:
        """Stop the loader workers."""
        del self._batches

    def next_batches(self, step: int) -> dict[str, list[dict[str, Any]]]:
        """The step's micro-batches per task for this process, from the loader; its task(s)
        must be the ones this process's schedule samples."""
        state = self.state
        self._step_stage = state.schedule.stage
        tasks = state.streams.layout.sample_tasks(state.schedule)
        batch = next(self._batches)
        if batch["step"] != step or batch["tasks"] != tasks:
            raise RuntimeError(
                f"data loader out of step: it built step {batch['step']} for {batch['tasks']}, "
                f"the schedule is at step {step} with {tasks}"
            )
        state.streams.consumed(batch)
        device = self.accelerator.device
        return {
            task: [
                {
                    k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
                    for k, v in m.items()
                }
                for m in micro
            ]
            for task, micro in batch["batches"].items()
        }

    def learning_rate(self, step: int) -> float:
        """Peak LR times the stage-restarted warm-up/decay factor."""
        return self.config.optim.lr * self.lr.factor(step)

    def phase(self, step: int) -> tuple[int | str, float | str]:
        """(stage, '') of the step just trained: pretraining has stages, not epochs."""
        return self._step_stage + 1, ""

    def at_boundary(self, done: int) -> bool:
        """A stage ended (or the schedule finished)."""
        schedule = self.state.schedule
        return schedule.stage != self._step_stage or schedule.finished

    def progress_text(self, log: LogWindow) -> str:
        """Stage, the window's task mix, losses and throughput."""
        mix = ",".join(f"{t[:4]}:{len(v)}" for t, v in log.losses.items())
        losses = " ".join(f"{t[:4]}={v:.3f}" for t, v in log.means.items())
        return (
            f"stage {self._step_stage + 1} | {mix} | {losses} | "
            f"{log.rates['train/tokens_per_s']:,.0f} tok/s"
        )

    def extra_scalars(self, done: int) -> dict[str, float]:
        """The stage of the window's last step."""
        return {"train/stage": self._step_stage + 1}

    def on_step_end(self, done: int, boundary: bool, losses: dict[str, float]) -> None:
        """Held-out evaluation every `eval_every` steps and at stage ends; it closes the
        balancer's window and feeds it the tasks' accuracies (DTP's KPIs)."""
        if done % self.config.eval_every == 0 or boundary:
            self.balancer.end_window()
            results = self._evaluate(done, self._step_stage)
            self.balancer.update_kpis({t: r["accuracy"] for t, r in results.items()})

    @torch.no_grad()
    def _evaluate(self, step: int, stage: int) -> dict[str, dict[str, float]]:
        """Held-out loss/accuracy of every task seen so far (the forgetting monitor)."""
        results = {}
        self.model.eval()
        for task in self.state.schedule_tasks_seen(stage):
            batches = self.state.heldout_batches(
                task, self.config.eval_batches, self.config.batch_size
            )
            if not batches:
                continue
            loss_sum, correct, count = 0.0, 0.0, 0.0
            targets: Counter[int] = Counter()
            subsets: dict[str, list[float]] = {}
            for batch in batches:
                out = self.model([dict(batch, task=task)])[0]
                logits = out.logits.float()
                metrics = self.state.tasks[task].metrics(logits, out.targets)
                loss_sum += out.loss.float().item() * metrics["count"]
                correct += metrics["accuracy"] * metrics["count"]
                count += metrics["count"]
                targets.update(out.targets.flatten().tolist())
                for name, (right, n) in (
                    self.state.tasks[task].subset_metrics(logits, out.targets).items()
                ):
                    total = subsets.setdefault(name, [0.0, 0.0])
                    total[0] += right
                    total[1] += n
            if count:
                results[task] = {
                    "loss": loss_sum / count,
                    "accuracy": correct / count,
                    # Always answering the most common target: what the accuracy is read against.
                    "majority": max(targets.values()) / sum(targets.values()),
                    **{name: right / n for name, (right, n) in subsets.items() if n},
                }
        self.logger.heldout(step, stage + 1, results)
        schedule = self.state.schedule
        self.logger.plot_heldout([schedule.stage_start(s) for s in range(len(schedule.stages))])
        return results

    # ---- checkpoints --------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        """Schedule, every rank's stream positions (gathered: a collective), tasks, tokenizer."""
        return {
            "schedule": self.state.schedule.state_dict(),
            "streams": self.state.streams.state_dict(gather_from_ranks),
            "tasks": {name: t.task_id for name, t in self.state.tasks.items()},
            "tokenizer_fingerprint": tokenizer_fingerprint(self.state.tokenizer),
        }

    def write_checkpoint_files(self, writer: CheckpointWriter, unwrapped: Any) -> None:
        """The tokenizer and the backbone config (what a release is exported from)."""
        self.state.tokenizer.save_pretrained(str(writer.tmp / "tokenizer"))
        writer.save_json("backbone_config.json", unwrapped.backbone.config.to_dict())

    def check_checkpoint(self, checkpoint: Path, state: dict[str, Any]) -> list[str]:
        """Same model size and tokenizer; the heads of tasks new to this run may be missing."""
        backbone = (checkpoint / "backbone_config.json").read_text(encoding="utf-8")
        check_compatible(
            self.state, checkpoint, json.loads(backbone), state.get("tokenizer_fingerprint")
        )
        self.new_tasks = [t for t in self.state.tasks if t not in state["tasks"]]
        return [f"heads.{t}." for t in self.new_tasks]

    def restore_state(self, checkpoint: Path, state: dict[str, Any]) -> None:
        """Schedule and stream positions (re-sharded when the world size changed)."""
        self.state.schedule.load_state_dict(state["schedule"])
        self.data_message = self.state.streams.load_state_dict(state["streams"])


def tasks_per_step(config: PretrainConfig) -> int:
    """How many tasks share one step's batch."""
    k = config.schedule.tasks_per_step if config.schedule.mixed_batches else 1
    return k + int(config.schedule.mlm_every_step)


def check_batch_divides(config: PretrainConfig, world: int) -> None:
    """Refuse a batch size that does not split evenly over processes, micro-batches and the
    tasks of a step."""
    k = tasks_per_step(config)
    unit = world * config.optim.grad_accum_steps
    per_task = config.batch_size // k
    if per_task == 0 or per_task % unit or config.batch_size % k:
        raise ValueError(
            f"batch_size={config.batch_size} does not divide across {world} process(es) x "
            f"{config.optim.grad_accum_steps} micro-batch(es) x {k} task(s) per step"
        )
