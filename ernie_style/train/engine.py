"""The training engine pretraining and fine-tuning share.

`TrainEngine` owns what both runs do the same way: the accelerator and precision, the step
(per-step seed, learning rate, `StepRunner` with the loss balancer and clipping), the NaN policy
(a non-finite step is skipped; `max_nonfinite_steps` in a row save the last good state and stop),
logging (progress bar, TensorBoard, `train_loss.csv` with one set of columns), the exact token
count, and checkpoints (`save` / `restore`: model, optimizer by parameter name, balancer, RNG,
counters, plus the run's own state from `checkpoint_state`).

A run subclasses it and supplies its batches, learning rate, evaluation and extra state:

    next_batches(step)         the step's micro-batches per task, on the device
    learning_rate(step)        the step's peak-LR multiple times the peak LR
    phase(step)                (stage, epoch) of a step, for the logs
    at_boundary(done)          whether a stage or epoch ended after `done` steps
    on_step_end(done, ...)     evaluation and balancer windows
    checkpoint_state()         its part of trainer_state.json (a collective: every rank calls)
    restore_state(...)         reads it back

The subclass builds its model, balancer and optimizer, then calls `finish_setup(checkpoint)`,
which restores a checkpoint (before wrapping), wraps model and optimizer for the backend and
builds the step runner and logger.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ernie_style.config import dump_yaml
from ernie_style.fileio import atomic_write
from ernie_style.precision import resolve_precision, run_device_type
from ernie_style.train.accelerator import make_accelerator, step_seed
from ernie_style.train.balancing import LossBalancer
from ernie_style.train.checkpoint import (
    CheckpointWriter,
    load_optimizer_state_by_name,
    load_tensors,
    optimizer_state_by_name,
    prune,
    resolve_resume,
    writing_checkpoint,
)
from ernie_style.train.deepspeed_support import (
    gather_full_state,
    is_deepspeed_engine,
    restore_full_state,
)
from ernie_style.train.monitor import RunLogger
from ernie_style.train.step import StepRunner
from ernie_style.untrusted import load_torch_file

ZERO3_RESUME_NOTE = (
    "DeepSpeed ZeRO-3 resume: weights, Adam moments and step are restored exactly; the updates "
    "after it may differ from an uninterrupted run in the last bits (ZeRO-1/2 resume bit for bit)"
)


@dataclass
class LogWindow:
    """The steps since the last log line: where it ends (`done` steps), every task's losses in
    it, their means, and the rates (tokens/s, steps/s, data-wait fraction)."""

    done: int
    losses: dict[str, list[float]]
    means: dict[str, float]
    rates: dict[str, float]


class NonFiniteLossError(RuntimeError):
    """Raised after too many consecutive NaN/inf losses (a checkpoint was saved first)."""


def parameter_names(model: Any, balancer: LossBalancer | None = None) -> dict[Any, str]:
    """Parameter -> checkpoint name (the balancer's own parameters as `balancer.*`)."""
    names = {p: n for n, p in model.named_parameters()}
    if balancer is not None:
        names |= {p: f"balancer.{n}" for n, p in balancer.named_parameters()}
    return names


def load_weights(
    model: Any, weights: dict[str, torch.Tensor], allowed_missing: Sequence[str], source: Path
) -> None:
    """Load `weights` into `model`; only the `allowed_missing` keys (the parts of tasks new to
    this run; an entry ending in '.' is a prefix, any other an exact key) may be missing, none
    may be unexpected."""
    missing, unexpected = model.load_state_dict(weights, strict=False)
    prefixes = tuple(k for k in allowed_missing if k.endswith("."))
    exact = {k for k in allowed_missing if not k.endswith(".")}
    bad_missing = [k for k in missing if not (k.startswith(prefixes) or k in exact)]
    if bad_missing or unexpected:
        raise ValueError(
            f"{source}: weights do not fit this config (missing {bad_missing[:5]}, "
            f"unexpected {unexpected[:5]})"
        )


class TrainEngine:
    """The training loop, step, NaN policy, logging and checkpoints of a run (see module doc)."""

    #: Shown by `resolve_resume` when `--resume DIR` does not exist.
    resume_kind = "checkpoint"
    #: What the run's phases are called in its logs: "stage" or "epoch".
    phase_name = "stage"

    def __init__(self, config: Any) -> None:
        self.config = config
        self.run_dir = Path(config.output_dir)
        self.precision = resolve_precision(config.precision, run_device_type())
        self.accelerator = make_accelerator(self.precision)
        self.step = 0
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        self.tokens_seen = 0
        self._unsynced_tokens = 0  # this rank's trained tokens not yet in tokens_seen
        # Set by the subclass before `finish_setup`:
        self.raw_model: Any = None
        self.raw_optimizer: Any = None
        self.balancer: LossBalancer | None = None

    # ---- hooks -------------------------------------------------------------------------------
    @property
    def total_steps(self) -> int:
        """Steps of the whole run."""
        raise NotImplementedError

    def next_batches(self, step: int) -> dict[str, list[dict[str, Any]]]:
        """The step's micro-batches per task for this process, on the device."""
        raise NotImplementedError

    def learning_rate(self, step: int) -> float:
        """The learning rate of a step."""
        raise NotImplementedError

    def phase(self, step: int) -> tuple[int | str, float | str]:
        """(stage, epoch) of a step for the logs; '' where the run has no such notion."""
        raise NotImplementedError

    def at_boundary(self, done: int) -> bool:
        """Whether a stage or epoch ended with step `done - 1`."""
        return False

    def on_step_end(self, done: int, boundary: bool, losses: dict[str, float]) -> None:
        """After step `done - 1` (and its log line): evaluation, balancer windows."""

    def progress_text(self, log: LogWindow) -> str:
        """The progress bar's postfix for a logging window."""
        losses = " ".join(f"{t[:6]}={v:.3f}" for t, v in log.means.items())
        return f"{losses} | {log.rates['train/tokens_per_s']:,.0f} tok/s"

    def extra_scalars(self, done: int) -> dict[str, float]:
        """Run-specific TensorBoard scalars of a logging window."""
        return {}

    def checkpoint_state(self) -> dict[str, Any]:
        """The run's own part of trainer_state.json (every rank calls it: it may gather)."""
        return {}

    def write_checkpoint_files(self, writer: CheckpointWriter, unwrapped: Any) -> None:
        """Extra files of a checkpoint (tokenizer, backbone config ...)."""

    def check_checkpoint(self, checkpoint: Path, state: dict[str, Any]) -> list[str]:
        """Refuse a checkpoint this run cannot continue; returns the parameter-name prefixes
        allowed to be missing from its weights (parts of tasks new to this run)."""
        return []

    def restore_state(self, checkpoint: Path, state: dict[str, Any]) -> None:
        """Read back what `checkpoint_state` wrote."""

    def wrap(self) -> tuple[Any, Any]:
        """Model and optimizer wrapped for the backend (DDP, DeepSpeed ...)."""
        return self.accelerator.prepare(self.raw_model, self.raw_optimizer)

    def finish(self) -> Any:
        """After the last step (exports, final tables); returns what `train` returns."""
        return self.run_dir

    # ---- setup -------------------------------------------------------------------------------
    def resolve_resume(self, resume: str | None) -> Path | None:
        """The checkpoint `--resume` names (None: a fresh run)."""
        return resolve_resume(resume, self.run_dir / "checkpoints", self.print, self.resume_kind)

    def finish_setup(
        self, checkpoint: Path | None, shared_parameters: Sequence[torch.nn.Parameter] = ()
    ) -> None:
        """Restore `checkpoint` (if any), wrap model and optimizer, build step runner and
        logger. `shared_parameters`: where GradNorm measures gradient norms."""
        if checkpoint is not None:
            self.restore(checkpoint)
            self.print(f"resumed from {checkpoint} at step {self.step}")
        self.model, self.optimizer = self.wrap()
        if checkpoint is not None and is_deepspeed_engine(self.model):
            weights = load_tensors(checkpoint / "model.safetensors")
            saved = load_torch_file(checkpoint / "optimizer.pt")
            restore_full_state(self.model, weights, saved)
            if self.model.zero_optimization_stage() == 3:
                self.print(ZERO3_RESUME_NOTE)
        self.stepper = StepRunner(
            self.accelerator,
            self.model,
            self.optimizer,
            self.config.optim.max_grad_norm,
            self.balancer,
            shared_parameters,
        )
        self.logger = RunLogger(
            self.run_dir, enabled=self.accelerator.is_main_process, phase=self.phase_name
        )

    @property
    def unwrapped(self) -> Any:
        """The model without its DDP/DeepSpeed wrapper."""
        if is_deepspeed_engine(self.model):
            return self.model.module
        return self.accelerator.unwrap_model(self.model)

    def print(self, message: str) -> None:
        """A line on the main process, above the progress bar."""
        if self.accelerator.is_main_process:
            tqdm.write(message)

    # ---- the loop ----------------------------------------------------------------------------
    def train(self) -> Any:
        """Train to the last step, checkpointing and evaluating on the way; then `finish`."""
        config = self.config
        if self.accelerator.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(self.run_dir / "config.yaml", dump_yaml(config))
        self.before_training()
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            disable=not self.accelerator.is_main_process,
            unit="step",
            dynamic_ncols=True,
        )
        window: dict[str, list[float]] = {}
        tokens, data_seconds, window_start, window_steps = 0, 0.0, time.perf_counter(), 0
        run_start, run_tokens = window_start, self.tokens_seen
        while self.step < self.total_steps:
            step = self.step
            fetch_start = time.perf_counter()
            batches = self.next_batches(step)
            data_seconds += time.perf_counter() - fetch_start
            losses = self.train_step(step, batches)
            self.step = done = step + 1
            local = sum(int(b["attention_mask"].sum()) for micro in batches.values() for b in micro)
            # Ranks train different examples: the window's rate is an estimate (this rank's
            # tokens x world); the exact count is summed over ranks at every checkpoint.
            tokens += self.accelerator.num_processes * local
            self._unsynced_tokens += local
            for task, loss in losses.items():
                window.setdefault(task, []).append(loss)
            self.logger.train_losses(step, *self.phase(step), losses)
            bar.update(1)
            window_steps += 1
            boundary = self.at_boundary(done) or done == self.total_steps
            if done % config.log_every == 0 or boundary:
                seconds = max(time.perf_counter() - window_start, 1e-9)
                rates = {
                    "train/tokens_per_s": tokens / seconds,
                    "train/steps_per_s": window_steps / seconds,
                    "train/data_wait_fraction": data_seconds / seconds,
                }
                self._log(bar, done, window, rates)
                window, tokens, data_seconds, window_steps = {}, 0, 0.0, 0
                window_start = time.perf_counter()
            self.on_step_end(done, boundary, losses)
            if boundary or (config.checkpoint_every and done % config.checkpoint_every == 0):
                self.save()
        bar.close()
        self.after_training()
        self._sync_tokens()
        seconds, trained = time.perf_counter() - run_start, self.tokens_seen - run_tokens
        if trained:
            self.print(
                f"trained {trained:,} tokens in {seconds:.1f} s: {trained / seconds:,.0f} "
                f"tokens/s ({self.precision.dtype}, evaluation and checkpoints included)"
            )
        result = self.finish()
        self.logger.close()
        self.accelerator.wait_for_everyone()
        return result

    def before_training(self) -> None:
        """Just before the first step (start data loaders, clean up after a killed run)."""

    def after_training(self) -> None:
        """Just after the last step (stop data loaders)."""

    def train_step(self, step: int, batches: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
        """One optimizer step; a non-finite loss skips it, and `max_nonfinite_steps` in a row
        stop the run after saving the last good state."""
        config = self.config
        torch.manual_seed(step_seed(config.seed, step, self.accelerator.process_index))
        self.stepper.set_lr(self.learning_rate(step))
        totals, applied = self.stepper.run(batches, config.optim.grad_accum_steps)
        if applied:
            self.nonfinite_in_a_row = 0
            return totals
        self.nonfinite_in_a_row += 1
        self.nonfinite_total += 1
        self.print(f"step {step}: non-finite loss {totals}; step skipped")
        if self.nonfinite_in_a_row >= config.max_nonfinite_steps:
            self.step = step + 1  # the skipped step is done: its data and schedule are consumed
            path = self.save()
            raise NonFiniteLossError(
                f"{self.nonfinite_in_a_row} non-finite losses in a row at step {step}; "
                f"stopped. The last good state is saved in {path}"
            )
        return totals

    def _log(
        self, bar: Any, done: int, window: dict[str, list[float]], rates: dict[str, float]
    ) -> None:
        """Progress bar and TensorBoard for a logging window (one set of scalars for every
        run: train/loss/TASK, balancing/weight/TASK, train/lr, the rates, and the run's own)."""
        means = {t: sum(v) / len(v) for t, v in window.items()}
        bar.set_postfix_str(self.progress_text(LogWindow(done, window, means, rates)))
        scalars = {f"train/loss/{t}": v for t, v in means.items()}
        if self.balancer is not None:
            scalars |= {f"balancing/weight/{t}": w for t, w in self.balancer.weights().items()}
        scalars |= rates | {"train/lr": self.optimizer.param_groups[0]["lr"]}
        self.logger.scalars(done, scalars | self.extra_scalars(done))

    def _sync_tokens(self) -> None:
        """Add the tokens every rank trained on since the last call to `tokens_seen` (a
        collective)."""
        count = torch.tensor([self._unsynced_tokens], dtype=torch.long)
        if self.accelerator.num_processes > 1:
            count = self.accelerator.reduce(count.to(self.accelerator.device), reduction="sum")
        self.tokens_seen += int(count.item())
        self._unsynced_tokens = 0

    # ---- checkpoints -------------------------------------------------------------------------
    def save(self) -> Path:
        """Write `output_dir/checkpoints/step-N` (every process must call it), prune old ones."""
        self._sync_tokens()
        accel = self.accelerator
        root = self.run_dir / "checkpoints"
        accel.wait_for_everyone()
        own_state = self.checkpoint_state()  # may be a collective: every rank
        path = root / f"step-{self.step:08d}"
        if is_deepspeed_engine(self.model):
            # ZeRO shards weights/moments: gather them per name (a collective, on every rank).
            weights, optimizer_state = gather_full_state(self.model)
        else:
            weights = self.unwrapped.state_dict()
            names = parameter_names(self.unwrapped, self.balancer)
            optimizer_state = optimizer_state_by_name(self.raw_optimizer, names)
        if accel.is_main_process:
            state = {
                "step": self.step,
                **own_state,
                "nonfinite_total": self.nonfinite_total,
                "nonfinite_in_a_row": self.nonfinite_in_a_row,
                "tokens_seen": self.tokens_seen,
                "num_processes": accel.num_processes,
                "precision": self.precision.to_dict(),
            }
            # A failed write (disk full...) removes the temp dir and raises CheckpointWriteError.
            with writing_checkpoint(root, self.step) as writer:
                writer.save_tensors("model.safetensors", weights)
                writer.save_torch("optimizer.pt", optimizer_state)
                if self.balancer is not None:
                    writer.save_torch("balancer.pt", self.balancer.state_dict())
                writer.save_tensors("rng_state.safetensors", {"torch": torch.get_rng_state()})
                writer.save_json("trainer_state.json", state)
                writer.save_text("config.yaml", dump_yaml(self.config))
                self.write_checkpoint_files(writer, self.unwrapped)
                path = writer.commit({"step": self.step})
            prune(root, self.config.keep_checkpoints)
        accel.wait_for_everyone()
        return path

    def restore(self, checkpoint: Path) -> None:
        """Load a checkpoint into the freshly built, not yet wrapped, model and optimizer."""
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
        allowed_missing = self.check_checkpoint(checkpoint, state)
        weights = load_tensors(checkpoint / "model.safetensors")
        load_weights(self.raw_model, weights, allowed_missing, checkpoint)
        params = {n: p for p, n in parameter_names(self.raw_model, self.balancer).items()}
        saved_optimizer = load_torch_file(checkpoint / "optimizer.pt")
        load_optimizer_state_by_name(self.raw_optimizer, saved_optimizer, params)
        if self.balancer is not None and (checkpoint / "balancer.pt").is_file():
            self.balancer.load_state_dict(load_torch_file(checkpoint / "balancer.pt"))
        self.step = int(state["step"])
        self.nonfinite_total = int(state.get("nonfinite_total", 0))
        self.tokens_seen = int(state.get("tokens_seen", 0))
        self.restore_state(checkpoint, state)
        torch.set_rng_state(load_tensors(checkpoint / "rng_state.safetensors")["torch"])
