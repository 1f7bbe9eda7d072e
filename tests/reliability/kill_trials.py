"""The kill trial: one runner for every command (tests/reliability/kill_*.py, soak.py).

A *trial* runs an `ernie-style` command, SIGKILLs it (once per fault; see kill_faults.py),
checks what the dead process left, runs the command again until it finishes (`--resume auto`
for the training commands) and checks the outcome against an uninterrupted reference run.
`run_trial` does that for any command; a `KillCase` subclass per command says how to kill it,
what must hold after a kill, how to finish and what to compare: kill_training.py (`pretrain`,
`finetune`), kill_prepare.py, kill_ingest.py.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from kill_faults import Kill, kill_at_random
from kill_runs import Launcher, fork_launcher, log_tail


@dataclass
class Trial:
    """The outcome of one trial: the kills, whether the command then finished with every check
    holding (`survived`), and how many rows/tensors ended up lost, duplicated or different
    from the uninterrupted reference (`data_lost`)."""

    command: str
    fault: str
    seed: int
    kills: list[Kill] = field(default_factory=list)
    survived: bool = False
    data_lost: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Trial:
        """The inverse of `as_dict`."""
        kills = [Kill(**k) for k in data.get("kills", [])]
        return cls(**{**data, "kills": kills})


class KillCase:
    """One trial's runs of one command in its own work dir; subclasses fill in the steps that
    `run_trial` takes. Problems are messages; `lost` counts rows/tensors lost or wrong."""

    command: ClassVar[str]
    log: Path  # where every run of the trial writes its output

    def setup(self, faults: Sequence[str], launch: Launcher) -> None:
        """Before the first kill of `faults` (e.g. an older output to replace)."""

    def kill(self, number: int, fault: str, rng: random.Random, launch: Launcher) -> Kill:
        """Start the `number`-th run (from 0) and inject `fault`; draw randomness from `rng`."""
        raise NotImplementedError

    def after_kill(self, number: int, fault: str, kill: Kill) -> tuple[list[str], int]:
        """What must hold right after a kill: (problems, lost)."""
        return [], 0

    def finish(self, launch: Launcher) -> None:
        """Run the command again to its end; RuntimeError if it fails."""
        raise NotImplementedError

    def compare(self) -> tuple[list[str], int]:
        """The finished outcome against the reference: (problems, lost)."""
        raise NotImplementedError

    def random_kill(
        self,
        launch: Launcher,
        argv: Sequence[str],
        rng: random.Random,
        fault: str,
        high: float,
        start_when: Callable[[], bool] | None = None,
    ) -> Kill:
        """SIGKILL the run after a delay drawn (with a seed from `rng`) from [0, high] s,
        counted from the launch or from when `start_when()` first holds."""
        seed = rng.randrange(1 << 30)
        return kill_at_random(
            launch, argv, seed, 0, high, start_when=start_when, fault=fault, log=self.log
        )


def run_trial(
    case: KillCase,
    seed: int,
    faults: Sequence[str],
    launch: Launcher = fork_launcher,
) -> Trial:
    """Kill `case`'s command once per entry of `faults` (each on the next run), checking after
    each kill; then finish the command and compare with the reference. Randomness comes from
    `random.Random(seed)`."""
    started = time.monotonic()
    trial = Trial(case.command, "+".join(faults), seed)
    rng = random.Random(seed)
    case.setup(faults, launch)
    for number, fault in enumerate(faults):
        kill = case.kill(number, fault, rng, launch)
        trial.kills.append(kill)
        problems, lost = case.after_kill(number, fault, kill)
        trial.problems += problems
        trial.data_lost += lost
    try:
        case.finish(launch)
    except RuntimeError as error:
        trial.problems.append(f"the re-run failed: {error}")
        trial.data_lost += 1
    else:
        problems, lost = case.compare()
        trial.problems += problems
        trial.data_lost += lost
    trial.survived = not trial.problems
    trial.seconds = round(time.monotonic() - started, 2)
    return trial


def timed_run(
    launch: Launcher, argv: Sequence[str], log: Path, started: Callable[[], bool]
) -> tuple[float, float]:
    """Run `ernie-style ARGV` uninterrupted (a reference run); returns its duration and the
    part of it after `started()` first held (at least 0.05 s; all of it if it never held)."""
    start = time.monotonic()
    proc = launch(argv, log, None)
    first = None
    while proc.poll() is None:
        if first is None and started():
            first = time.monotonic() - start
        time.sleep(0.002)
    if proc.wait() != 0:
        raise RuntimeError(f"reference {argv[0]} failed:\n{log_tail(log)}")
    total = time.monotonic() - start
    first = total if first is None else first
    return total, max(total - first, 0.05)


def tensors_differ(got: Path, expected: Path) -> list[str]:
    """Names of tensors missing from, or different in, `got` (vs `expected`)."""
    import torch
    from safetensors.torch import load_file

    a, b = load_file(str(got)), load_file(str(expected))
    return sorted(k for k in b if k not in a or not torch.equal(a[k], b[k])) + sorted(
        k for k in a if k not in b
    )


def stale_entries(directory: Path, *patterns: str) -> list[str]:
    """Names in `directory` matching any of the glob `patterns` (temp dirs left behind)."""
    return sorted(p.name for pattern in patterns for p in directory.glob(pattern))
