"""Helpers for the test suite, the benchmarks and the experiments of a source checkout.

They read the repository's shipped data (`data/`, `configs/`) and start `ernie-style` runs in
child processes with a quiet, offline, deterministic environment. Nothing here is imported by
the package itself, and importing `ernie_style.testing` loads neither torch nor transformers
(the submodules that need them import them inside their functions):

* `ernie_style.testing.pretrain`: a small prepared corpus, tiny pretraining configs, the
  pretrain command line, per-step losses;
* `ernie_style.testing.finetune`: a tiny local encoder release, fine-tuning configs over the
  shipped tasks, per-step losses;
* `ernie_style.testing.model`: a tiny seeded ERNIE backbone for head and loss checks.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

#: The root of the source checkout (its `data/`, `configs/`, `runs/`).
ROOT = Path(__file__).resolve().parents[2]

#: What every child run gets on top of the current environment: offline, quiet, one thread.
CHILD_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
    "PYTHONWARNINGS": "ignore",
    # DeepSpeed compiles a small op on first use (~20 s): keep it between runs.
    "TORCH_EXTENSIONS_DIR": str(ROOT / ".cache" / "torch_extensions"),
}


def child_env() -> dict[str, str]:
    """The environment for child processes: this one plus `CHILD_ENV`."""
    return dict(os.environ) | CHILD_ENV


def free_port() -> int:
    """A TCP port free on this host now, for a launcher's rendezvous (`--main_process_port`).

    Fixed ports collide when tests run side by side (pytest-xdist workers); the OS hands each
    caller a different free one."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
