"""Checkpoints: written to a temp dir, checksummed, then renamed into place.

    checkpoints/step-00000120/
        model.safetensors      model weights (tied weights stored once)
        optimizer.pt           AdamW state keyed by parameter *name* (tensors only; loaded with
                               torch.load(weights_only=True)), so new tasks' parameters can join
        trainer_state.json     step, schedule, data-stream positions, LR schedule, counters
        rng_state.safetensors  torch/numpy RNG states
        config.yaml            the resolved run config
        tokenizer/             the tokenizer
        manifest.json          sha256 + size of every file above; written last

A directory without a valid manifest, or whose files do not match it, is skipped by
`find_resumable` with a warning naming the file.

Writes go through `writing_checkpoint`: if any of them fails (disk full, file too large,
read-only or unwritable directory) the temp dir is removed, the checkpoints already in place are
untouched, and the error becomes one `CheckpointWriteError` line naming the checkpoint, the cause
and the newest checkpoint `--resume auto` will use.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ernie_style.fileio import pid_alive, replace_dir, sweep_stale_dirs

MANIFEST = "manifest.json"
STEP_PREFIX = "step-"


def step_dir_name(step: int) -> str:
    """`step-00000120` for step 120."""
    return f"{STEP_PREFIX}{step:08d}"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path, extra: Mapping[str, Any] | None = None) -> None:
    """Checksum every file under `directory` into manifest.json (atomically)."""
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST):
        rel = path.relative_to(directory).as_posix()
        files[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    manifest = {"format": 1, "files": files, **(extra or {})}
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    _fsync(tmp)
    os.replace(tmp, directory / MANIFEST)


def verify(directory: Path) -> str | None:
    """None if the checkpoint is complete and intact, else the reason (naming the file)."""
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return f"{directory}: no {MANIFEST} (incomplete checkpoint)"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as error:
        return f"{manifest_path}: unreadable manifest ({error})"
    for rel, meta in files.items():
        path = directory / rel
        if not path.is_file():
            return f"{path}: missing"
        if path.stat().st_size != meta["size"]:
            return f"{path}: size {path.stat().st_size} != {meta['size']} in manifest (truncated?)"
        if sha256_file(path) != meta["sha256"]:
            return f"{path}: checksum mismatch (corrupt)"
    return None


def list_checkpoints(root: Path) -> list[Path]:
    """Checkpoint directories under `root`, newest step first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX)]
    return sorted(found, key=lambda p: p.name, reverse=True)


def find_resumable(root: Path) -> Path | None:
    """The newest complete, intact checkpoint; corrupt or partial ones are skipped, warned."""
    recover_replaced(root)
    for candidate in list_checkpoints(root):
        problem = verify(candidate)
        if problem is None:
            return candidate
        warnings.warn(f"skipping checkpoint {candidate.name}: {problem}", stacklevel=2)
    return None


def _fsync(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


class CheckpointWriter:
    """Builds one checkpoint in a temp dir and renames it into place on `commit`."""

    def __init__(self, root: Path, step: int) -> None:
        self.root = root
        self.final = root / step_dir_name(step)
        self.tmp = root / f".tmp-{step_dir_name(step)}-{os.getpid()}"
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)

    def save_tensors(self, name: str, tensors: Mapping[str, torch.Tensor]) -> None:
        """Write a safetensors file (contiguous CPU copies); I/O failures raise OSError.

        Tied tensors (one tensor under several names, e.g. a masked-LM decoder tied to the word
        embeddings) are written once; `load_tensors` gives them back under every name."""
        path = self.tmp / name
        kept, aliases = split_tied(tensors)
        metadata = {ALIASES_KEY: json.dumps(aliases)} if aliases else None
        try:
            save_file(
                {k: v.detach().contiguous().cpu() for k, v in kept.items()}, path, metadata=metadata
            )
        except SafetensorError as error:
            raise _os_error_of(error, path) from error

    def save_torch(self, name: str, obj: Any) -> None:
        """torch.save an object made of tensors and plain containers only; I/O failures raise
        OSError (torch itself reports them as an opaque RuntimeError)."""
        path = self.tmp / name
        with path.open("wb") as f:
            sink = _RecordingWriter(f)
            try:
                torch.save(obj, sink)
            except RuntimeError:
                if sink.error is None:
                    raise
                raise OSError(sink.error.errno, sink.error.strerror, str(path)) from sink.error

    def save_json(self, name: str, obj: Any) -> None:
        """Write JSON."""
        (self.tmp / name).write_text(json.dumps(obj, indent=1), encoding="utf-8")

    def save_text(self, name: str, text: str) -> None:
        """Write a text file."""
        (self.tmp / name).write_text(text, encoding="utf-8")

    def commit(self, extra_manifest: Mapping[str, Any] | None = None) -> Path:
        """Fsync, checksum, and rename into place (replacing an older copy of the same step)."""
        for path in self.tmp.rglob("*"):
            if path.is_file():
                _fsync(path)
        write_manifest(self.tmp, extra_manifest)
        # An older copy of the same step is replaced without a moment of having neither.
        replace_dir(self.tmp, self.final)
        return self.final

    def abort(self) -> None:
        """Remove the temp dir (after a failed write)."""
        shutil.rmtree(self.tmp, ignore_errors=True)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the message is one line (path, cause, fallback)."""


class _RecordingWriter:
    """A file wrapper for torch.save that remembers the first OSError of a write."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = self.error or error
            raise

    def flush(self) -> None:
        self.file.flush()


def _os_error_of(error: Exception, path: Path) -> Exception:
    """The OSError behind a safetensors error ("... (os error 28)"), else `error` itself."""
    found = re.search(r"os error (\d+)", str(error))
    if found is None:
        return error
    code = int(found.group(1))
    return OSError(code, os.strerror(code), str(path))


def _cause(error: OSError) -> str:
    """The reason of an OSError: "No space left on device", "File too large"..."""
    return error.strerror or str(error) or type(error).__name__


def newest_committed(root: Path) -> Path | None:
    """The newest checkpoint under `root` with a manifest (cheap: no checksums)."""
    return next((p for p in list_checkpoints(root) if (p / MANIFEST).is_file()), None)


def write_failure_message(final: Path, error: OSError) -> str:
    """One line: which checkpoint failed, why, and which one `--resume auto` falls back to."""
    previous = newest_committed(final.parent)
    if previous is None:
        fallback = "there is no earlier checkpoint to resume from"
    else:
        fallback = f"the previous checkpoint {previous.name} is intact (--resume auto uses it)"
    return f"could not write checkpoint {final} ({_cause(error)}); {fallback}"


@contextmanager
def writing_checkpoint(root: Path, step: int) -> Iterator[CheckpointWriter]:
    """A `CheckpointWriter` for `root/step-N` whose temp dir is removed if the body fails; an
    OSError (disk full, file too large, read-only, permission denied) is re-raised as one
    `CheckpointWriteError` line. The body calls `writer.commit(...)` itself."""
    writer = None
    try:
        writer = CheckpointWriter(root, step)
        yield writer
    except OSError as error:
        if writer is not None:
            writer.abort()
        if isinstance(error, CheckpointWriteError):
            raise
        message = write_failure_message(root / step_dir_name(step), error)
        raise CheckpointWriteError(message) from error
    except BaseException:
        if writer is not None:
            writer.abort()
        raise


def prune(root: Path, keep: int) -> None:
    """Keep the newest `keep` checkpoints; also clear temp dirs left by killed writers, and
    put back an older copy that a writer killed while replacing it had moved aside."""
    for stale in root.glob(".tmp-*"):
        if not pid_alive(stale.name.rsplit("-", 1)[-1]):
            shutil.rmtree(stale, ignore_errors=True)
    recover_replaced(root)
    for old in list_checkpoints(root)[max(keep, 1) :]:
        shutil.rmtree(old, ignore_errors=True)


def recover_replaced(root: Path) -> None:
    """A writer killed while replacing a checkpoint of the same step may leave the old copy
    aside (`.step-N.old-PID-TOKEN` from `fileio.replace_dir` where the system has no atomic
    exchange; `.trash-step-N-PID` from earlier versions) and maybe no `step-N`: put it back (or
    drop it if `step-N` exists)."""
    if not root.is_dir():
        return
    for moved in root.glob(f".{STEP_PREFIX}*.old-*"):
        sweep_stale_dirs(root / moved.name[1:].split(".old-")[0])
    for moved in root.glob(".trash-*"):
        if pid_alive(moved.name.rsplit("-", 1)[-1]):
            continue
        original = root / moved.name.removeprefix(".trash-").rsplit("-", 1)[0]
        if original.exists():
            shutil.rmtree(moved, ignore_errors=True)
        else:
            os.replace(moved, original)


#: safetensors metadata key of the names `save_tensors` wrote once for tied tensors.
ALIASES_KEY = "ernie_style_tied"


def split_tied(
    tensors: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(`tensors` without the second and later names of a tied tensor, {dropped name: kept
    name}). Tied means the same storage, offset, shape and strides."""
    kept: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for key, value in tensors.items():
        identity = (
            value.untyped_storage().data_ptr(),
            value.storage_offset(),
            tuple(value.shape),
            value.stride(),
            value.device.type,
        )
        if value.numel() and identity in seen:
            aliases[key] = seen[identity]
        else:
            seen.setdefault(identity, key)
            kept[key] = value
    return kept, aliases


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file (never executes code); tied names written once come back under
    every name."""
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    for alias, key in json.loads(metadata.get(ALIASES_KEY, "{}")).items():
        tensors[alias] = tensors[key]
    return tensors


def load_torch(path: Path) -> Any:
    """torch.load restricted to tensors and plain containers (weights_only=True)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def optimizer_state_by_name(
    optimizer: torch.optim.Optimizer, names: Mapping[torch.nn.Parameter, str]
) -> dict[str, Any]:
    """The optimizer's per-parameter state keyed by parameter name (plus its groups)."""
    state = {names[p]: dict(s) for p, s in optimizer.state.items() if p in names}
    groups = [
        {k: v for k, v in group.items() if k != "params"}
        | {"names": [names[p] for p in group["params"]]}
        for group in optimizer.param_groups
    ]
    return {"state": state, "param_groups": groups}


def load_optimizer_state_by_name(
    optimizer: torch.optim.Optimizer,
    saved: Mapping[str, Any],
    params: Mapping[str, torch.nn.Parameter],
) -> list[str]:
    """Restore per-parameter state for the names present in `saved`; returns the names that had
    none (new parameters). Hyper-parameters stay as configured."""
    restored = []
    for name, state in saved["state"].items():
        param = params.get(name)
        if param is None:
            raise ValueError(f"optimizer state for unknown parameter {name!r}")
        optimizer.state[param] = {
            k: v.to(param.device) if isinstance(v, torch.Tensor) and v.dim() else v
            for k, v in state.items()
        }
        restored.append(name)
    return sorted(set(params) - set(restored))


def resolve_resume(
    resume: str | None, root: Path, report: Callable[[str], None], kind: str = "checkpoint"
) -> Path | None:
    """The directory `--resume` names: None (fresh run), `auto` (the newest complete
    checkpoint under `root`; `report` says when there is none) or an existing directory."""
    if resume is None:
        return None
    if resume == "auto":
        # Skipped (corrupt, partial) checkpoints are also reported through `report`, so the
        # run's output says so even where Python warnings are filtered (PYTHONWARNINGS=ignore).
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            found = find_resumable(root)
        for warning in caught:
            report(f"warning: {warning.message}")
        if found is None:
            report("no complete checkpoint to resume from; starting fresh")
        return found
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"--resume {resume}: no such {kind} directory")
    return path
