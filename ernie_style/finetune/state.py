"""Fine-tuning run state on disk: checkpoints (exact resume), the best model, the tokenizer.

A checkpoint (`output_dir/checkpoints/step-N/`, written to a temp dir then renamed, with a
sha256 manifest) holds the model weights, the optimizer state by parameter name (the loss
balancer's parameters as `balancer.*`), the balancer's state, the sampler positions, step,
evaluation history, best score, RNG state and the config.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from transformers import AutoTokenizer

from ernie_style.config import dump_yaml
from ernie_style.train.checkpoint import (
    load_optimizer_state_by_name,
    load_tensors,
    optimizer_state_by_name,
    prune,
    writing_checkpoint,
)
from ernie_style.untrusted import load_torch_file, refuse_remote_code

if TYPE_CHECKING:
    from ernie_style.finetune.config import FinetuneConfig
    from ernie_style.finetune.trainer import FinetuneTrainer


def load_finetune_tokenizer(config: FinetuneConfig) -> Any:
    """The run's fast tokenizer from a local directory; errors name the key."""
    path = Path(config.tokenizer_path)
    key = "tokenizer" if config.tokenizer else "encoder"
    if not path.is_dir():
        raise ValueError(f"{key}: {path} is not a directory")
    refuse_remote_code(path, key, config.trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=config.trust_remote_code
        )
    except (OSError, ValueError) as error:
        raise ValueError(f"{key}: no usable tokenizer in {path}: {error}") from error
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{key}: the tokenizer in {path} is not a fast (Rust) tokenizer")
    return tokenizer


def _named_parameters(trainer: FinetuneTrainer) -> dict[torch.nn.Parameter, str]:
    names = {p: n for n, p in trainer.unwrapped.named_parameters()}
    names |= {p: f"balancer.{n}" for n, p in trainer.balancer.named_parameters()}
    return names


def save_finetune_checkpoint(trainer: FinetuneTrainer) -> Path:
    """Write `output_dir/checkpoints/step-N` on the main process, then prune old ones."""
    accel, config = trainer.accelerator, trainer.config
    root = Path(config.output_dir) / "checkpoints"
    accel.wait_for_everyone()
    path = root / f"step-{trainer.step:08d}"
    if accel.is_main_process:
        # A failed write (disk full...) removes the temp dir and raises CheckpointWriteError.
        with writing_checkpoint(root, trainer.step) as writer:
            writer.save_tensors("model.safetensors", trainer.unwrapped.state_dict())
            writer.save_torch(
                "optimizer.pt",
                optimizer_state_by_name(trainer.optimizer, _named_parameters(trainer)),
            )
            writer.save_torch("balancer.pt", trainer.balancer.state_dict())
            writer.save_tensors("rng_state.safetensors", {"torch": torch.get_rng_state()})
            writer.save_json(
                "trainer_state.json",
                {
                    "step": trainer.step,
                    "sampler": trainer.sampler.state_dict(),
                    "history": trainer.history,
                    "best": trainer.best,
                    "tasks": list(trainer.tasks),
                    "num_processes": accel.num_processes,
                    "precision": trainer.precision.to_dict(),
                },
            )
            writer.save_text("config.yaml", dump_yaml(config))
            path = writer.commit({"step": trainer.step})
        prune(root, config.keep_checkpoints)
    accel.wait_for_everyone()
    return path


def load_finetune_checkpoint(trainer: FinetuneTrainer, checkpoint: Path) -> None:
    """Restore a checkpoint into a freshly built trainer (before `accelerator.prepare`)."""
    state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    missing = sorted(set(state["tasks"]) - set(trainer.tasks))
    if missing:
        raise ValueError(f"{checkpoint}: the checkpoint has tasks {missing} this config lacks")
    weights = load_tensors(checkpoint / "model.safetensors")
    model = trainer.model
    new = [t for t in trainer.tasks if t not in state["tasks"]]
    result = model.load_state_dict(weights, strict=False)
    allowed = tuple(f"heads.{t}." for t in new) + tuple(f"sharing.{t}" for t in new)
    bad = [k for k in result.missing_keys if not k.startswith(allowed)]
    if bad or result.unexpected_keys:
        raise ValueError(
            f"{checkpoint}: weights do not fit this config (missing {bad[:5]}, "
            f"unexpected {result.unexpected_keys[:5]})"
        )
    params = {n: p for p, n in _named_parameters(trainer).items()}
    saved_optimizer = load_torch_file(checkpoint / "optimizer.pt")
    load_optimizer_state_by_name(trainer.optimizer, saved_optimizer, params)
    trainer.balancer.load_state_dict(load_torch_file(checkpoint / "balancer.pt"))
    trainer.sampler.load_state_dict(state["sampler"])
    trainer.step = int(state["step"])
    trainer.history = list(state["history"])
    trainer.best = dict(state["best"])
    torch.set_rng_state(load_tensors(checkpoint / "rng_state.safetensors")["torch"])


def save_best(trainer: FinetuneTrainer) -> None:
    """Write the current weights to `output_dir/best/` (temp dir, then rename)."""
    if not trainer.accelerator.is_main_process:
        return
    best = Path(trainer.config.output_dir) / "best"
    tmp = best.with_name(f".best.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    weights = {k: v.detach().contiguous().cpu() for k, v in trainer.unwrapped.state_dict().items()}
    try:
        tmp.mkdir(parents=True)
        save_file(weights, str(tmp / "model.safetensors"))
        (tmp / "best.json").write_text(json.dumps(trainer.best) + "\n", encoding="utf-8")
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk leaves no half-written copy
        if isinstance(error, SafetensorError):
            raise OSError(f"could not write {best}: {error}") from error
        raise
    old = best.with_name(f".best.old-{os.getpid()}")
    if best.exists():
        best.rename(old)
    tmp.rename(best)
    shutil.rmtree(old, ignore_errors=True)
