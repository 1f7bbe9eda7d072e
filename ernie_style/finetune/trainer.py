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
from pathlib import Path
from typing import Any

import torch

from ernie_style.cpu_kernels import use_cpu_kernels
from ernie_style.fileio import atomic_write
from ernie_style.finetune.config import FinetuneConfig
from ernie_style.finetune.data import EncodedTask, load_tasks
from ernie_style.finetune.encoder_families import FamilyEncoder
from ernie_style.finetune.evaluation import metrics_table, predict_split, write_predictions
from ernie_style.finetune.export import export_questions, export_task
from ernie_style.finetune.model import (
    MultiTaskModel,
    build_model,
    load_encoder,
    load_finetune_tokenizer,
)
from ernie_style.finetune.plots import plot_learning_curves
from ernie_style.finetune.sampler import TaskSampler
from ernie_style.finetune.state import recover_best, save_best
from ernie_style.train.balancing import LossBalancer, build_balancer
from ernie_style.train.engine import LogWindow, TrainEngine
from ernie_style.train.lr import lr_factor
from ernie_style.train.optim import build_adamw


class FinetuneTrainer(TrainEngine):
    """Builds everything from a `FinetuneConfig` and runs it to the end (on the shared engine:
    it adds the task sampler, dev evaluation, the best model and the per-task exports)."""

    phase_name = "epoch"

    def __init__(self, config: FinetuneConfig, resume: str | None = None) -> None:
        super().__init__(config)
        accel = self.accelerator
        self.print(self.precision.describe())
        self.tokenizer = load_finetune_tokenizer(config)
        encoder = load_encoder(config.encoder, trust_remote_code=config.trust_remote_code)
        if encoder.config.vocab_size < len(self.tokenizer):
            raise ValueError(
                f"tokenizer {config.tokenizer_path} has {len(self.tokenizer)} tokens but the "
                f"encoder {config.encoder} has vocab_size {encoder.config.vocab_size}: they do "
                "not belong together"
            )
        if accel.device.type == "cpu" and not isinstance(encoder, FamilyEncoder):
            use_cpu_kernels(encoder)  # the ernie_cpu attention is BERT's; the others keep SDPA
        self.tasks: dict[str, EncodedTask] = load_tasks(
            config, self.tokenizer, cache_dir=self.run_dir / "cache" / "silver"
        )
        self._check_batches(accel.num_processes)
        self.batch_sizes = {t.name: config.batch_size_of(t) for t in config.tasks}
        self.raw_model = build_model(
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
        self.raw_optimizer = build_adamw(self.raw_model, config.optim, self.balancer.parameters())
        sizes = {name: len(task.splits["train"]) for name, task in self.tasks.items()}
        first = (config.first_stage_tasks or []) if config.stages == "anti_curriculum" else []
        self.sampler = TaskSampler(
            sizes,
            self.batch_sizes,
            config.sampling,
            config.temperature,
            config.seed,
            first_tasks=first,
            first_epochs=config.first_stage_epochs,
        )
        self._total_steps = self.sampler.total_steps(config.epochs)
        self.warmup = config.optim.warmup(self._total_steps)
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"score": None, "step": None}
        self._epoch_losses: dict[str, list[float]] = {}
        self.finish_setup(self.resolve_resume(resume), _last_shared_layer(self.raw_model))
        for task in self.tasks.values():
            for line in task.summary():
                self.print(line)

    # ---- setup ---------------------------------------------------------------------------
    def _check_batches(self, world: int) -> None:
        accum = self.config.optim.grad_accum_steps
        for i, task in enumerate(self.config.tasks):
            size = self.config.batch_size_of(task)
            key = f"tasks[{i}].batch_size" if task.batch_size else "batch_size"
            if size % (world * accum):
                raise ValueError(
                    f"{key}={size} does not divide across {world} process(es) x "
                    f"{accum} micro-batch(es)"
                )

    def _balancing_options(self) -> dict[str, Any]:
        options = dict(self.config.balancing_options)
        if self.config.balancing == "fixed" and "weights" not in options:
            options["weights"] = {t.name: t.loss_weight for t in self.config.tasks}
        return options

    # ---- the engine's hooks ----------------------------------------------------------------
    @property
    def total_steps(self) -> int:
        """The first stage (anti-curriculum) plus epochs x the sampler's steps per epoch."""
        return self._total_steps

    def before_training(self) -> None:
        """Put back a best model a killed `save_best` had moved aside."""
        if self.accelerator.is_main_process:
            recover_best(self.run_dir)

    def next_batches(self, step: int) -> dict[str, list[dict[str, Any]]]:
        """The sampled task's batch: this process's share (`indices[rank::world]`), split into
        micro-batches, on the device."""
        accel = self.accelerator
        name = self.sampler.task_at(step)
        task = self.tasks[name]
        indices = self.sampler.take(name, self.batch_sizes[name])
        mine = indices[accel.process_index :: accel.num_processes]
        accum = self.config.optim.grad_accum_steps
        size = len(mine) // accum
        micro = []
        for i in range(accum):
            examples = [task.splits["train"][j] for j in mine[i * size : (i + 1) * size]]
            batch = task.collator(examples)
            micro.append({k: v.to(accel.device) for k, v in batch.items()})
        return {name: micro}

    def learning_rate(self, step: int) -> float:
        """Peak LR times the warm-up/decay factor over the whole run."""
        optim = self.config.optim
        return optim.lr * lr_factor(step, self.total_steps, self.warmup, optim.lr_schedule)

    def phase(self, step: int) -> tuple[int | str, float | str]:
        """('', epoch) of a step (1-based); with an anti-curriculum (stage, epoch in it)."""
        stage, epoch = self.sampler.phase_of(step)
        return stage if self.sampler.first_steps else "", epoch

    def at_boundary(self, done: int) -> bool:
        """An epoch (or the anti-curriculum's first stage) ended."""
        return self.sampler.is_epoch_end(done)

    def progress_text(self, log: LogWindow) -> str:
        """Epoch, losses and the last dev scores."""
        stage, epoch = self.sampler.progress(log.done)
        if self.sampler.first_steps:
            epoch = epoch if stage == 1 else epoch + self.config.first_stage_epochs
        last = self.history[-1]["dev"] if self.history else {}
        dev = " ".join(f"{t[:8]}={m['main']:.3f}" for t, m in last.items())
        return (
            f"ep {epoch:.2f} | "
            + " ".join(f"{t[:8]}={v:.3f}" for t, v in log.means.items())
            + (f" | dev {dev}" if dev else "")
        )

    def extra_scalars(self, done: int) -> dict[str, float]:
        """The epoch reached (within its stage) and, with an anti-curriculum, the stage."""
        stage, epoch = self.sampler.progress(done)
        extra = {"train/stage": stage} if self.sampler.first_steps else {}
        return {"train/epoch": epoch} | extra

    def on_step_end(self, done: int, boundary: bool, losses: dict[str, float]) -> None:
        """At epoch ends the balancer's window closes on the epoch's mean losses; dev
        evaluation at epoch ends and every `eval_every` steps."""
        for task, value in losses.items():
            self._epoch_losses.setdefault(task, []).append(value)
        if boundary:
            means = {t: sum(v) / len(v) for t, v in self._epoch_losses.items()}
            self.balancer.end_window(means)
            self._epoch_losses = {}
        every = self.config.eval_every
        if boundary or (every and done % every == 0) or done == self.total_steps:
            self._evaluate_dev()

    def checkpoint_state(self) -> dict[str, Any]:
        """Sampler positions, evaluation history, best score, tasks."""
        return {
            "sampler": self.sampler.state_dict(),
            "history": self.history,
            "best": self.best,
            "tasks": list(self.tasks),
        }

    def check_checkpoint(self, checkpoint: Path, state: dict[str, Any]) -> list[str]:
        """The checkpoint's tasks must all be in this config; heads and sharing parts of new
        tasks may be missing from its weights."""
        missing = sorted(set(state["tasks"]) - set(self.tasks))
        if missing:
            raise ValueError(f"{checkpoint}: the checkpoint has tasks {missing} this config lacks")
        new = [t for t in self.tasks if t not in state["tasks"]]
        sharing = self.raw_model.sharing
        allowed = [f"heads.{t}." for t in new] + [
            f"sharing.{key}" for t in new for key in sharing.task_keys(t)
        ]
        old_questions = [t for t in state["tasks"] if self.tasks[t].is_question]
        if not old_questions:  # the shared pointer joins with the first question task
            allowed.append("pointer.")
        return allowed

    def restore_state(self, checkpoint: Path, state: dict[str, Any]) -> None:
        """Sampler positions, history and best score; the sharing layer fixes up the parts of
        tasks new to this run."""
        new = [t for t in self.tasks if t not in state["tasks"]]
        if new:
            self.raw_model.sharing.tasks_added(new)
        self.sampler.load_state_dict(state["sampler"])
        self.history = list(state["history"])
        self.best = dict(state["best"])

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

    def _evaluate_dev(self) -> None:
        results = self.evaluate("dev")
        if not results:
            return
        score = sum(r["main"] for r in results.values()) / len(results)
        stage, epoch = self.sampler.progress(self.step)
        record = {
            "step": self.step,
            "epoch": epoch,
            "stage": stage,
            "score": score,
            "dev": {t: {"main": r["main"], **r["metrics"]} for t, r in results.items()},
        }
        self.history.append(record)
        self.balancer.update_kpis({t: min(max(r["main"], 0.0), 1.0) for t, r in results.items()})
        scalars = {f"dev/{t}/{m}": v for t, r in results.items() for m, v in r["metrics"].items()}
        self.logger.scalars(self.step, scalars | {"dev/average_main_metric": score})
        if self.best["score"] is None or score > self.best["score"]:
            self.best = {"score": score, "step": self.step}
            if self.accelerator.is_main_process:
                save_best(self.run_dir, self.unwrapped.state_dict(), self.best)
        if self.accelerator.is_main_process:
            atomic_write(self.run_dir / "history.json", json.dumps(self.history, indent=2))
            plot_learning_curves(self.history, self.run_dir / "learning_curves.png")
        summary = " ".join(f"{t}={r['main']:.3f}" for t, r in results.items())
        self.print(f"step {self.step}: dev {summary} (average {score:.4f})")

    def finish(self) -> dict[str, dict[str, dict[str, float]]]:
        """Load the best model, export each task, predict test splits, write the tables."""
        best = self.run_dir / "best" / "model.safetensors"
        if best.is_file():
            from safetensors.torch import load_file

            self.unwrapped.load_state_dict(load_file(str(best)))
        table: dict[str, dict[str, dict[str, float]]] = {}
        baselines: dict[str, dict[str, float] | None] = {}
        for split in ("dev", "test"):
            for name, result in self.evaluate(split).items():
                table.setdefault(name, {})[split] = result["metrics"]
                if split == "test":
                    predictions = result["predictions"]
                    baselines[name] = predictions.majority_metrics(list(result["metrics"]))
                    if self.accelerator.is_main_process:
                        path = self.run_dir / "predictions" / f"{name}.jsonl"
                        write_predictions(path, predictions)
        if self.accelerator.is_main_process:
            atomic_write(self.run_dir / "metrics.json", json.dumps(table, indent=2) + "\n")
            atomic_write(self.run_dir / "metrics.md", metrics_table(table, baselines))
            if self.unwrapped.sharing.exportable:
                questions = [t for t in self.tasks.values() if t.is_question]
                if questions and self.unwrapped.sharing.kind != "hard":
                    self.print(
                        f"question tasks: no stock export with sharing={self.config.sharing} "
                        "(each task's path differs); the model is in best/"
                    )
                elif questions:
                    export_questions(
                        self.unwrapped,
                        questions,
                        self.tokenizer,
                        self.run_dir / "tasks" / "questions",
                        precision=self.precision.to_dict(),
                    )
                for name, task in self.tasks.items():
                    if task.is_question:
                        continue
                    if name in self.unwrapped.reads_from:
                        self.print(
                            f"{name}: no stock transformers export (its head also reads "
                            f"{', '.join(self.unwrapped.reads_from[name])}); the model is in "
                            "best/ (ernie_style.finetune.loading.load_finetuned rebuilds it)"
                        )
                        continue
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
                self.print(
                    f"sharing={self.config.sharing}: no stock transformers export (its layers "
                    "have no transformers counterpart); the model is in best/ "
                    "(ernie_style.finetune.loading.load_finetuned rebuilds it)"
                )
            self.print(metrics_table(table))
        return table


def _last_shared_layer(model: MultiTaskModel) -> list[torch.nn.Parameter]:
    """Parameters of the encoder's last transformer layer (GradNorm's shared layer); the
    embeddings when towers took every layer (`soft`/`cross_stitch` with tower_layers = L)."""
    layers = getattr(getattr(model.encoder, "encoder", None), "layer", None)
    if layers is None:
        return []
    shared = layers[-1] if len(layers) else getattr(model.encoder, "embeddings", None)
    return [] if shared is None else [p for p in shared.parameters() if p.requires_grad]
