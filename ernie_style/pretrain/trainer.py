"""The continual multi-task pretraining loop, on `accelerate` (CPU, DDP, DeepSpeed).

Exact resume by construction: every step reseeds torch from (seed, step), the task sampler is
seeded by (seed, step) and data streams are positional, so a run resumed from a checkpoint
replays the same steps as the uninterrupted run. Each process builds only its own share of a
step, in DataLoader worker processes (`ernie_style.pretrain.loader`); a run resumed on another
number of processes or workers re-shards its data streams without losing or repeating an example.
"""

from __future__ import annotations

import functools
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import (
    DistributedDataParallelKwargs,
    DistributedType,
    DynamoBackend,
    TorchDynamoPlugin,
)
from tqdm import tqdm

from ernie_style.config import dump_yaml
from ernie_style.fileio import atomic_write
from ernie_style.precision import PrecisionChoice, resolve_precision, run_device_type
from ernie_style.pretrain.config import PretrainConfig
from ernie_style.pretrain.export import RELEASE_MARKER
from ernie_style.pretrain.schedule import StageLR
from ernie_style.pretrain.state import (
    RunState,
    build_run_state,
    load_checkpoint,
    load_full_state,
    load_release,
    save_checkpoint,
)
from ernie_style.train.balancing import LossBalancer, build_balancer
from ernie_style.train.checkpoint import resolve_resume
from ernie_style.train.deepspeed_support import (
    fill_auto,
    is_deepspeed_engine,
    resolve_config,
    restore_full_state,
)
from ernie_style.train.deepspeed_support import initialize as deepspeed_initialize
from ernie_style.train.monitor import RunLogger
from ernie_style.train.step import StepRunner


class NonFiniteLossError(RuntimeError):
    """Raised after too many consecutive NaN/inf losses (a checkpoint was saved first)."""


def make_accelerator(precision: PrecisionChoice) -> Accelerator:
    """An Accelerator on CPU when there is no GPU, in the resolved precision; unused task heads
    are allowed under DDP."""
    mixed = precision.mixed_precision
    no_gpu = not torch.cuda.is_available()
    if no_gpu and mixed == "fp16":
        raise ValueError("precision=fp16 needs a GPU; use auto, bf16 or fp32 on CPU")
    # `cpu=True` would silently turn a DeepSpeed launch into plain multi-CPU; DeepSpeed picks
    # its own CPU accelerator when there is no GPU.
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    state = AcceleratorState._shared_state
    compiling = getattr(state.get("dynamo_plugin"), "backend", DynamoBackend.NO)
    if state and (state.get("_mixed_precision", mixed) != mixed or compiling != DynamoBackend.NO):
        # Another run in this process (active-learning rounds, tests, a transformers Trainer
        # with torch_compile) chose another precision or a compiler: accelerate keeps one
        # global state, so start it afresh (the process group is kept).
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(
        cpu=no_gpu and not deepspeed,
        mixed_precision=mixed,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        # Never torch.compile the model (not even when ACCELERATE_DYNAMO_BACKEND is set): the
        # CPU dropout kernel draws its masks with numpy, which dynamo cannot trace.
        dynamo_plugin=TorchDynamoPlugin(backend=DynamoBackend.NO),
    )


def uses_deepspeed(accelerator: Accelerator, config: PretrainConfig) -> bool:
    """Whether the run trains through DeepSpeed (accelerate plugin or a `deepspeed` JSON)."""
    return accelerator.distributed_type == DistributedType.DEEPSPEED or bool(config.deepspeed)


class PretrainTrainer:
    """Runs a `PretrainConfig` to the end of its schedule, checkpointing along the way."""

    def __init__(self, config: PretrainConfig, resume: str | None = None) -> None:
        self.config = config
        self.run_dir = Path(config.output_dir)
        self.precision = resolve_precision(config.precision, run_device_type())
        self.accelerator = make_accelerator(self.precision)
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
        self.state.balancer = self._build_balancer(config)
        self.state.precision = self.precision.to_dict()
        checkpoint = resolve_resume(
            resume, self.run_dir / "checkpoints", self._print, "checkpoint or release"
        )
        if checkpoint is not None and (checkpoint / RELEASE_MARKER).is_file():
            load_release(self.state, checkpoint)
            self._print(f"continuing from release {checkpoint} at step {self.state.schedule.step}")
            checkpoint = None  # a release has no optimizer state to restore
        elif checkpoint is not None:
            load_checkpoint(self.state, checkpoint, config)
            self._print(f"resumed from {checkpoint} at step {self.state.schedule.step}")
            if self.state.data_message:
                self._print(self.state.data_message)
        self.lr = StageLR(
            self.state.schedule,
            config.optim.warmup_steps,
            config.optim.lr_schedule,
            config.schedule.restart_warmup_each_stage,
        )
        self.model, self.optimizer = self._prepare(config)
        if checkpoint is not None and is_deepspeed_engine(self.model):
            weights, optimizer_state = load_full_state(checkpoint)
            if not restore_full_state(self.model, weights, optimizer_state):
                self._print(
                    "DeepSpeed ZeRO-3 resume: weights, schedule and data positions are restored, "
                    "but Adam moments restart from zero and fp32 master weights from their bf16 "
                    "copies (use ZeRO-1/2 for an exact resume)"
                )
        self.stepper = StepRunner(
            self.accelerator,
            self.model,
            self.optimizer,
            config.optim.max_grad_norm,
            self.state.balancer,
            self._last_shared_layer(),
        )
        self.logger = RunLogger(self.run_dir, enabled=self.accelerator.is_main_process)
        self._unsynced_tokens = 0  # this rank's trained tokens not yet in state.tokens_seen
        self._print(self.precision.describe())
        self._print(f"{self.backend_name()}, {self.state.schedule.total_steps} steps")

    def backend_name(self) -> str:
        """e.g. 'DeepSpeed ZeRO-2 x 2 process(es) on cpu' or 'MULTI_GPU x 8 process(es) on cuda'."""
        accel = self.accelerator
        if is_deepspeed_engine(self.model):
            stage = self.model.zero_optimization_stage()
            kind = f"DeepSpeed ZeRO-{stage}"
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
            self.state.optimizer.add_param_group({"params": extra, "weight_decay": 0.0})
        return balancer

    def _last_shared_layer(self) -> list[torch.nn.Parameter]:
        """The backbone's last transformer layer (GradNorm's gradient norms are taken there)."""
        if not self.state.balancer.needs_shared_parameters:
            return []
        if is_deepspeed_engine(self.model) and self.model.zero_optimization_stage() == 3:
            raise ValueError("balancing: gradnorm needs full weights; not with DeepSpeed ZeRO-3")
        return list(self.state.model.backbone.encoder.layer[-1].parameters())

    def _prepare(self, config: PretrainConfig) -> tuple[Any, Any]:
        """Wrap model and optimizer for the backend: accelerate (plain, DDP, its DeepSpeed
        plugin) or, for torchrun launches with `deepspeed=FILE`, `deepspeed.initialize`."""
        accel, state = self.accelerator, self.state
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
        elif config.deepspeed:
            ds_config = resolve_config(
                config.deepspeed, micro, accum, world, config, self.precision.dtype
            )
            engine = deepspeed_initialize(state.model, state.optimizer, ds_config)
            return engine, engine.optimizer
        return accel.prepare(state.model, state.optimizer)

    def _print(self, message: str) -> None:
        if self.accelerator.is_main_process:
            tqdm.write(message)

    # ---- the loop -----------------------------------------------------------------------
    def train(self) -> Path:
        """Train to the end of the schedule; returns the run directory."""
        config, schedule = self.config, self.state.schedule
        if self.accelerator.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(self.run_dir / "config.yaml", dump_yaml(config))
        bar = tqdm(
            total=schedule.total_steps,
            initial=schedule.step,
            disable=not self.accelerator.is_main_process,
            unit="step",
            dynamic_ncols=True,
        )
        self._batches = iter(
            self.state.streams.loader(schedule, self.state.pad_id, config.data.prefetch_factor)
        )
        window: dict[str, list[float]] = {}
        tokens_in_window, window_start, data_seconds = 0, time.perf_counter(), 0.0
        run_start, run_tokens = window_start, self.state.tokens_seen
        while not schedule.finished:
            stage_before = schedule.stage
            step = schedule.step
            t0 = time.perf_counter()
            batches = self._next_batches()
            data_seconds += time.perf_counter() - t0
            losses = self._train_step(step, batches)
            for task, loss in losses.items():
                window.setdefault(task, []).append(loss)
            local_tokens = sum(
                int(b["attention_mask"].sum()) for micro in batches.values() for b in micro
            )
            # Ranks build different examples: the window's rate is an estimate (this rank's
            # tokens x world); the exact count is summed over ranks at every checkpoint.
            tokens_in_window += self.accelerator.num_processes * local_tokens
            self._unsynced_tokens += local_tokens
            stage_ended = schedule.stage != stage_before or schedule.finished
            self.logger.train_losses(step, stage_before + 1, losses)
            bar.update(1)
            if (step + 1) % config.log_every == 0 or stage_ended:
                elapsed = time.perf_counter() - window_start
                self._log(
                    bar,
                    step,
                    stage_before,
                    window,
                    tokens_in_window / elapsed,
                    data_seconds / elapsed,
                )
                window, tokens_in_window, window_start, data_seconds = (
                    {},
                    0,
                    time.perf_counter(),
                    0.0,
                )
            if (step + 1) % config.eval_every == 0 or stage_ended:
                self.state.balancer.end_window()
                results = self._evaluate(step + 1, stage_before)
                self.state.balancer.update_kpis({t: r["accuracy"] for t, r in results.items()})
            if (step + 1) % config.checkpoint_every == 0 or stage_ended:
                self.save()
        bar.close()
        self.logger.close()
        del self._batches  # stops the loader workers
        self._sync_tokens()
        seconds, tokens = time.perf_counter() - run_start, self.state.tokens_seen - run_tokens
        if tokens:
            self._print(
                f"trained {tokens:,} tokens in {seconds:.1f} s: {tokens / seconds:,.0f} tokens/s "
                f"({self.precision.dtype}, evaluation and checkpoints included)"
            )
        self.accelerator.wait_for_everyone()
        return self.run_dir

    def _sync_tokens(self) -> None:
        """Add the tokens every rank trained on since the last call to `tokens_seen` (a
        collective)."""
        count = torch.tensor([self._unsynced_tokens], dtype=torch.long)
        if self.accelerator.num_processes > 1:
            count = self.accelerator.reduce(count.to(self.accelerator.device), reduction="sum")
        self.state.tokens_seen += int(count.item())
        self._unsynced_tokens = 0

    def _next_batches(self) -> dict[str, list[dict]]:
        """The step's micro-batches per task for this process, from the loader; its task(s)
        must be the ones this process's schedule samples."""
        state = self.state
        step = state.schedule.step
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

    def _train_step(self, step: int, batches: dict[str, list[dict]]) -> dict[str, float]:
        """One optimizer step; a non-finite loss skips it, and too many in a row stop the run
        after saving the last good state."""
        config = self.config
        torch.manual_seed(step_seed(config.seed, step, self.accelerator.process_index))
        self.stepper.set_lr(config.optim.lr * self.lr.factor(step))
        totals, applied = self.stepper.run(batches, config.optim.grad_accum_steps)
        if applied:
            self.state.nonfinite_in_a_row = 0
            return totals
        self.state.nonfinite_in_a_row += 1
        self.state.nonfinite_total += 1
        self._print(f"step {step}: non-finite loss {totals}; step skipped")
        if self.state.nonfinite_in_a_row >= config.max_nonfinite_steps:
            path = self.save()
            raise NonFiniteLossError(
                f"{self.state.nonfinite_in_a_row} non-finite losses in a row at step {step}; "
                f"stopped. The last good state is saved in {path}"
            )
        return totals

    def _log(self, bar, step, stage, window, tokens_per_s, data_fraction) -> None:
        means = {t: sum(v) / len(v) for t, v in window.items()}
        mix = ",".join(f"{t[:4]}:{len(v)}" for t, v in window.items())
        bar.set_postfix_str(
            f"stage {stage + 1} | {mix} | "
            + " ".join(f"{t[:4]}={v:.3f}" for t, v in means.items())
            + f" | {tokens_per_s:,.0f} tok/s"
        )
        scalars = {f"train/loss/{t}": v for t, v in means.items()}
        scalars |= {f"balancing/weight/{t}": w for t, w in self.state.balancer.weights().items()}
        scalars |= {
            "train/tokens_per_s": tokens_per_s,
            "train/data_wait_fraction": data_fraction,
            "train/lr": self.optimizer.param_groups[0]["lr"],
            "train/stage": stage + 1,
        }
        self.logger.scalars(step + 1, scalars)

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
            for batch in batches:
                out = self.model([dict(batch, task=task)])[0]
                metrics = self.state.tasks[task].metrics(out.logits.float(), out.targets)
                loss_sum += out.loss.float().item() * metrics["count"]
                correct += metrics["accuracy"] * metrics["count"]
                count += metrics["count"]
                targets.update(out.targets.flatten().tolist())
            if count:
                results[task] = {
                    "loss": loss_sum / count,
                    "accuracy": correct / count,
                    # Always answering the most common target: what the accuracy is read against.
                    "majority": max(targets.values()) / sum(targets.values()),
                }
        self.logger.heldout(step, stage + 1, results)
        starts = [
            self.state.schedule.stage_start(s) for s in range(len(self.state.schedule.stages))
        ]
        self.logger.plot_heldout(starts)
        return results

    def save(self) -> Path:
        """Write a checkpoint of the current state (all processes must call it)."""
        self._sync_tokens()
        return save_checkpoint(
            self.state, self.accelerator, self.model, self.optimizer, self.config
        )


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


def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of one step on one process (dropout masks; exact resume)."""
    return (seed * 1_000_003 + step * 7_919 + rank) % (2**63 - 1)
