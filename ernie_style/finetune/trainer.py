"""`ernie-style finetune`: MT-DNN-style multi-task fine-tuning of a released encoder.

One shared encoder, one head per task, one task per step (drawn by `TaskSampler`), losses
combined by a `ernie_style.train.balancing` strategy, trained through accelerate (CPU, DDP, bf16).
Every epoch (or `eval_every` steps) each task is scored on its dev split; the best model by the
average of the tasks' main metrics is kept under `output_dir/best/`. At the end the best model
is exported per task (`output_dir/tasks/NAME/`, stock transformers), the test splits are
predicted (`output_dir/predictions/NAME.jsonl`) and a metrics table written
(`output_dir/metrics.json`, `metrics.md`). Checkpoints resume exactly (`--resume auto`).
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ernie_style.config import dump_yaml
from ernie_style.cpu_kernels import use_cpu_kernels
from ernie_style.fileio import atomic_write, pid_alive
from ernie_style.finetune.config import FinetuneConfig
from ernie_style.finetune.data import EncodedTask, load_tasks
from ernie_style.finetune.evaluation import (
    metrics_table,
    predict_split,
    write_predictions,
)
from ernie_style.finetune.export import export_task
from ernie_style.finetune.model import MultiTaskModel, build_model, load_encoder
from ernie_style.finetune.plots import plot_learning_curves
from ernie_style.finetune.sampler import TaskSampler
from ernie_style.finetune.state import (
    load_finetune_checkpoint,
    load_finetune_tokenizer,
    save_best,
    save_finetune_checkpoint,
)
from ernie_style.precision import resolve_precision, run_device_type
from ernie_style.pretrain.state import decay_groups
from ernie_style.pretrain.trainer import make_accelerator, step_seed
from ernie_style.train.balancing import LossBalancer, build_balancer
from ernie_style.train.checkpoint import resolve_resume
from ernie_style.train.lr import lr_factor
from ernie_style.train.monitor import RunLogger
from ernie_style.train.step import StepRunner


class FinetuneTrainer:
    """Builds everything from a `FinetuneConfig` and runs it to the end."""

    def __init__(self, config: FinetuneConfig, resume: str | None = None) -> None:
        self.config = config
        self.run_dir = Path(config.output_dir)
        self.precision = resolve_precision(config.precision, run_device_type())
        self.accelerator = accel = make_accelerator(self.precision)
        self._print(self.precision.describe())
        self.tokenizer = load_finetune_tokenizer(config)
        encoder = load_encoder(config.encoder, trust_remote_code=config.trust_remote_code)
        if encoder.config.vocab_size < len(self.tokenizer):
            raise ValueError(
                f"tokenizer {config.tokenizer_path} has {len(self.tokenizer)} tokens but the "
                f"encoder {config.encoder} has vocab_size {encoder.config.vocab_size}: they do "
                "not belong together"
            )
        if accel.device.type == "cpu":
            use_cpu_kernels(encoder)
        self.tasks: dict[str, EncodedTask] = load_tasks(
            config, self.tokenizer, cache_dir=self.run_dir / "cache" / "silver"
        )
        self._check_batches(accel.num_processes)
        self.batch_sizes = {t.name: config.batch_size_of(t) for t in config.tasks}
        self.model: Any = build_model(
            encoder,
            self.tasks,
            config.sharing,
            config.sharing_options,
            {},
            config.resolve_use_task_id(),
            config.seed,
        )
        reduce = None
        if accel.num_processes > 1:
            reduce = functools.partial(accel.reduce, reduction="mean")
        self.balancer: LossBalancer = build_balancer(
            config.balancing, list(self.tasks), self._balancing_options(), reduce
        ).to(accel.device)
        self.optimizer: Any = build_finetune_optimizer(self.model, self.balancer, config)
        sizes = {name: len(task.splits["train"]) for name, task in self.tasks.items()}
        self.sampler = TaskSampler(
            sizes, self.batch_sizes, config.sampling, config.temperature, config.seed
        )
        self.total_steps = config.epochs * self.sampler.steps_per_epoch
        self.warmup = int(config.warmup_ratio * self.total_steps)
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"score": None, "step": None}
        checkpoint = resolve_resume(resume, self.run_dir / "checkpoints", self._print)
        if checkpoint is not None:
            load_finetune_checkpoint(self, checkpoint)
            self._print(f"resumed from {checkpoint} at step {self.step}")
        self.model, self.optimizer = accel.prepare(self.model, self.optimizer)
        shared = _last_shared_layer(accel.unwrap_model(self.model))
        self.stepper = StepRunner(
            accel, self.model, self.optimizer, config.max_grad_norm, self.balancer, shared
        )
        self.logger = RunLogger(self.run_dir, enabled=accel.is_main_process)
        for task in self.tasks.values():
            for line in task.summary():
                self._print(line)

    # ---- setup ---------------------------------------------------------------------------
    def _check_batches(self, world: int) -> None:
        for i, task in enumerate(self.config.tasks):
            size = self.config.batch_size_of(task)
            key = f"tasks[{i}].batch_size" if task.batch_size else "batch_size"
            if size % (world * self.config.grad_accum_steps):
                raise ValueError(
                    f"{key}={size} does not divide across {world} process(es) x "
                    f"{self.config.grad_accum_steps} micro-batch(es)"
                )

    def _balancing_options(self) -> dict[str, Any]:
        options = dict(self.config.balancing_options)
        if self.config.balancing == "fixed" and "weights" not in options:
            options["weights"] = {t.name: t.loss_weight for t in self.config.tasks}
        return options

    def _print(self, message: str) -> None:
        if self.accelerator.is_main_process:
            tqdm.write(message)

    @property
    def unwrapped(self) -> MultiTaskModel:
        """The model without its DDP wrapper."""
        return self.accelerator.unwrap_model(self.model)

    # ---- training ------------------------------------------------------------------------
    def train(self) -> dict[str, dict[str, dict[str, float]]]:
        """Train, keep the best model, export it per task; returns the final metrics table."""
        config = self.config
        if self.accelerator.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            recover_best(self.run_dir)
            atomic_write(self.run_dir / "config.yaml", dump_yaml(config))
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            disable=not self.accelerator.is_main_process,
            unit="step",
            dynamic_ncols=True,
        )
        window: dict[str, list[float]] = {}
        epoch_losses: dict[str, list[float]] = {}
        per_epoch = self.sampler.steps_per_epoch
        started = time.perf_counter()
        while self.step < self.total_steps:
            step = self.step
            losses = self._train_step(step)
            self.step += 1
            self.logger.train_losses(step, step // per_epoch + 1, losses)
            for task, value in losses.items():
                window.setdefault(task, []).append(value)
                epoch_losses.setdefault(task, []).append(value)
            bar.update(1)
            epoch_end = self.step % per_epoch == 0
            if self.step % config.log_every == 0 or epoch_end:
                self._log(bar, window, time.perf_counter() - started)
                window, started = {}, time.perf_counter()
            if epoch_end:
                means = {t: sum(v) / len(v) for t, v in epoch_losses.items()}
                self.balancer.end_window(means)
                epoch_losses = {}
            evaluate = epoch_end or (config.eval_every and self.step % config.eval_every == 0)
            if evaluate or self.step == self.total_steps:
                self._evaluate_dev(bar)
            if (
                epoch_end
                or self.step == self.total_steps
                or (config.checkpoint_every and self.step % config.checkpoint_every == 0)
            ):
                save_finetune_checkpoint(self)
        bar.close()
        results = self._finish()
        self.logger.close()
        self.accelerator.wait_for_everyone()
        return results

    def _train_step(self, step: int) -> dict[str, float]:
        config, accel = self.config, self.accelerator
        torch.manual_seed(step_seed(config.seed, step, accel.process_index))
        name = self.sampler.task_at(step)
        task = self.tasks[name]
        indices = self.sampler.take(name, self.batch_sizes[name])
        mine = indices[accel.process_index :: accel.num_processes]
        accum = config.grad_accum_steps
        size = len(mine) // accum
        micro = []
        for i in range(accum):
            examples = [task.splits["train"][j] for j in mine[i * size : (i + 1) * size]]
            batch = task.collator(examples)
            micro.append({k: v.to(accel.device) for k, v in batch.items()})
        factor = lr_factor(step, self.total_steps, self.warmup, config.lr_schedule)
        self.stepper.set_lr(config.lr * factor)
        totals, applied = self.stepper.run({name: micro}, accum)
        if not applied:
            self._print(f"step {step}: non-finite loss {totals}; step skipped")
        return totals

    def _log(self, bar: Any, window: dict[str, list[float]], seconds: float) -> None:
        means = {t: sum(v) / len(v) for t, v in window.items()}
        steps = sum(len(v) for v in window.values())
        epoch = self.step / self.sampler.steps_per_epoch
        last = self.history[-1]["dev"] if self.history else {}
        dev = " ".join(f"{t[:8]}={m['main']:.3f}" for t, m in last.items())
        bar.set_postfix_str(
            f"ep {epoch:.2f} | "
            + " ".join(f"{t[:8]}={v:.3f}" for t, v in means.items())
            + (f" | dev {dev}" if dev else "")
        )
        scalars = {f"train/loss/{t}": v for t, v in means.items()}
        scalars |= {f"balancing/weight/{t}": w for t, w in self.balancer.weights().items()}
        scalars |= {
            "train/lr": self.optimizer.param_groups[0]["lr"],
            "train/steps_per_s": steps / max(seconds, 1e-9),
        }
        self.logger.scalars(self.step, scalars)

    # ---- evaluation ----------------------------------------------------------------------
    def _scorer(self, name: str) -> Any:
        model, accel = self.unwrapped, self.accelerator

        @torch.no_grad()
        def score(batch: dict[str, Any]) -> torch.Tensor:
            batch = {k: v.to(accel.device) for k, v in batch.items()}
            batch.pop("labels")
            with accel.autocast():
                return model(batch | {"task": name}).logits

        return score

    def evaluate(self, split: str) -> dict[str, Any]:
        """Predictions and metrics of every task on `split` (tasks without it are skipped)."""
        self.model.eval()
        results = {}
        for name, task in self.tasks.items():
            if split not in task.splits or not task.splits[split]:
                continue
            section = self.config.task(name)
            predictions = predict_split(task, split, self._scorer(name), self.batch_sizes[name] * 2)
            values = predictions.metrics(section.metrics or [])
            results[name] = {
                "metrics": values,
                "main": values[section.main_metric or ""],
                "predictions": predictions,
            }
        return results

    def _evaluate_dev(self, bar: Any) -> None:
        results = self.evaluate("dev")
        if not results:
            return
        score = sum(r["main"] for r in results.values()) / len(results)
        record = {
            "step": self.step,
            "epoch": self.step / self.sampler.steps_per_epoch,
            "score": score,
            "dev": {t: {"main": r["main"], **r["metrics"]} for t, r in results.items()},
        }
        self.history.append(record)
        self.balancer.update_kpis({t: min(max(r["main"], 0.0), 1.0) for t, r in results.items()})
        scalars = {f"dev/{t}/{m}": v for t, r in results.items() for m, v in r["metrics"].items()}
        self.logger.scalars(self.step, scalars | {"dev/average_main_metric": score})
        if self.best["score"] is None or score > self.best["score"]:
            self.best = {"score": score, "step": self.step}
            save_best(self)
        if self.accelerator.is_main_process:
            atomic_write(self.run_dir / "history.json", json.dumps(self.history, indent=2))
            plot_learning_curves(self.history, self.run_dir / "learning_curves.png")
        summary = " ".join(f"{t}={r['main']:.3f}" for t, r in results.items())
        self._print(f"step {self.step}: dev {summary} (average {score:.4f})")

    def _finish(self) -> dict[str, dict[str, dict[str, float]]]:
        """Load the best model, export each task, predict test splits, write the tables."""
        best = self.run_dir / "best" / "model.safetensors"
        if best.is_file():
            from safetensors.torch import load_file

            self.unwrapped.load_state_dict(load_file(str(best)))
        table: dict[str, dict[str, dict[str, float]]] = {}
        for split in ("dev", "test"):
            for name, result in self.evaluate(split).items():
                table.setdefault(name, {})[split] = result["metrics"]
                if split == "test" and self.accelerator.is_main_process:
                    path = self.run_dir / "predictions" / f"{name}.jsonl"
                    write_predictions(path, result["predictions"])
        if self.accelerator.is_main_process:
            atomic_write(self.run_dir / "metrics.json", json.dumps(table, indent=2) + "\n")
            atomic_write(self.run_dir / "metrics.md", metrics_table(table))
            if self.config.sharing == "hard":
                for name, task in self.tasks.items():
                    metrics = self.config.task(name).metrics or []
                    output = self.run_dir / "tasks" / name
                    export_task(
                        self.unwrapped,
                        task,
                        metrics,
                        self.tokenizer,
                        output,
                        precision=self.precision.to_dict(),
                    )
            else:
                self._print(
                    f"sharing={self.config.sharing}: no stock transformers export (the mixture "
                    "layers have no transformers counterpart); weights are in best/"
                )
            self._print(metrics_table(table))
        return table


def recover_best(run_dir: Path) -> None:
    """Clean up after a `save_best` that was killed: remove its temp copy (`.best.tmp-PID`);
    if it died between its two renames (no `best/`), put the previous copy (`.best.old-PID`)
    back. Copies of processes still running are left alone."""
    for path in sorted(run_dir.glob(".best.*-*")):
        pid = path.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or pid_alive(pid):
            continue
        if path.name.startswith(".best.old-") and not (run_dir / "best").exists():
            path.rename(run_dir / "best")
        else:
            shutil.rmtree(path, ignore_errors=True)


def build_finetune_optimizer(
    model: torch.nn.Module, balancer: LossBalancer, config: FinetuneConfig
) -> torch.optim.AdamW:
    """AdamW: weight decay on weight matrices only; the balancer's parameters undecayed."""
    groups = decay_groups(model, config.weight_decay)
    groups[1]["params"] += list(balancer.parameters())
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.999), eps=1e-6)


def _last_shared_layer(model: MultiTaskModel) -> list[torch.nn.Parameter]:
    """Parameters of the encoder's last transformer layer (GradNorm's shared layer)."""
    layers = getattr(getattr(model.encoder, "encoder", None), "layer", None)
    if layers is None:
        return []
    return [p for p in layers[-1].parameters() if p.requires_grad]
