"""Loading files that may come from strangers (checkpoints, releases, encoders) without running
their code.

* Weights are read from safetensors; a model directory whose only weights are pickle files
  (`pytorch_model.bin`, `*.pt`, ...) is refused (`refuse_pickle_weights`).
* The few `torch.load`s (optimizer and balancer state) run with `weights_only=True`; a file that
  needs anything beyond tensors and plain containers is refused with a one-line
  `UnsafeFileError` naming it (`load_torch_file`), and its payload never runs.
* Custom Python code named by a directory's `config.json` / `tokenizer_config.json`
  (`auto_map`) is never imported unless the user opted in (`refuse_remote_code`), and every
  `transformers` loader gets `trust_remote_code` explicitly (never its interactive prompt).
* YAML is parsed with the safe loader only (`ernie_style.config.read_yaml`).
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

#: Weight files that are pickles (loading one runs whatever it names, unless weights_only).
PICKLE_WEIGHT_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
#: Files of a model directory that may name custom code (`auto_map`).
CODE_CONFIGS = ("config.json", "tokenizer_config.json", "processor_config.json")
_UNSUPPORTED = re.compile(r"(Unsupported [^\n]*?)(?: was not an allowed|\.? Please|\n|$)")


class UnsafeFileError(ValueError):
    """A file refused because loading it could run code from whoever wrote it."""


def load_torch_file(path: Path) -> Any:
    """`torch.load(path, weights_only=True)` on CPU; a file holding other pickled objects is an
    `UnsafeFileError`, an unreadable one a `ValueError`, both naming the file."""
    from ernie_style.train.checkpoint import load_torch

    try:
        return load_torch(path)
    except pickle.UnpicklingError as error:
        found = _UNSUPPORTED.search(str(error))
        reason = found.group(1) if found else _first_line(error)
        raise UnsafeFileError(
            f"{path}: refused as unsafe: not a tensors-only torch file ({reason}); loading "
            "its pickled objects could run code"
        ) from None
    except (RuntimeError, EOFError, AttributeError, ImportError, IndexError, KeyError) as error:
        raise ValueError(f"{path}: not a readable torch file ({_first_line(error)})") from None


def refuse_pickle_weights(path: Path, key: str) -> None:
    """Refuse a model directory that has pickle weights (`pytorch_model.bin`, ...) but no
    `*.safetensors`: loading pickles from a stranger can run code."""
    if any(path.glob("*.safetensors")):
        return
    pickles = sorted(p.name for pattern in PICKLE_WEIGHT_PATTERNS for p in path.glob(pattern))
    if pickles:
        raise UnsafeFileError(
            f"{key}: {path} has only pickle weights ({', '.join(pickles)}), which are refused "
            "as unsafe; convert them to model.safetensors (e.g. load with transformers, then "
            "save_pretrained) and try again"
        )


def refuse_remote_code(path: Path, key: str, trust_remote_code: bool = False) -> None:
    """Refuse a model or tokenizer directory whose configs name custom Python code (`auto_map`),
    unless `trust_remote_code` (the user's explicit opt-in)."""
    if trust_remote_code:
        return
    for name in CODE_CONFIGS:
        file = path / name
        if not file.is_file():
            continue
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError):
            continue  # not JSON: the loader reports it
        auto_map = data.get("auto_map") if isinstance(data, dict) else None
        if auto_map:
            raise UnsafeFileError(
                f"{key}: {file} names custom Python code (auto_map {_names(auto_map)}), which "
                "is not run; set trust_remote_code: true only if you trust its author"
            )


def _names(auto_map: Any) -> str:
    values = auto_map.values() if isinstance(auto_map, dict) else [auto_map]
    text = ", ".join(sorted({str(v) for v in values}))
    return text if len(text) <= 120 else text[:117] + "..."


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
