"""Evaluation suites: fine-tune one encoder on every task of a suite, several seeds each.

A suite file (`configs/suites/*.yaml`) holds the fine-tuning settings shared by every run and the
tasks (in a fine-tuning config's `tasks` format). `run_suite` fine-tunes the encoder on each task
separately (and, with `joint: true`, on all tasks at once, MT-DNN style) for each seed, one
`ernie-style finetune` run per (task, seed) under `OUT/runs/`. A finished run (its metrics.json
exists) is reused and an interrupted one resumes from its newest checkpoint, so the command can be
killed and rerun at any point. `ernie_style.finetune.suite_report` summarises the runs.

Encoders: a local directory (an ernie-style release, a BERT/ERNIE checkpoint), `preset:NAME` (the
`NAME` size preset randomly initialised, vocabulary from `--tokenizer`) or `random:DIR` (DIR's
exact architecture and tokenizer, weights randomly initialised): the no-pretraining baselines.
A random encoder is initialised with the fine-tuning seed, so seeds also vary the initialisation.
"""

from __future__ import annotations

import fcntl
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ernie_style.config import from_dict, option, read_yaml
from ernie_style.fileio import atomic_dir, atomic_write
from ernie_style.run_lock import RunLock, RunLockedError

#: FinetuneConfig keys a suite sets per run; its `finetune:` section may not set them.
PER_RUN_KEYS = ("encoder", "tokenizer", "output_dir", "seed", "tasks")
JOINT = "joint"


@dataclass
class SuiteConfig:
    """An evaluation suite: shared fine-tuning settings and the tasks."""

    name: str = option("", "suite name (shown in reports)")
    description: str = option("", "what the suite measures")
    seeds: int = option(3, "fine-tuning seeds per task: 0 .. seeds-1 (--seeds overrides)")
    joint: bool = option(False, "also fine-tune all tasks at once (MT-DNN style), per seed")
    finetune: dict[str, Any] = option(
        {}, "fine-tuning config keys shared by every run (not encoder/output_dir/seed/tasks)"
    )
    tasks: list[dict[str, Any]] = option([], "the tasks, as in a fine-tuning config's `tasks`")
    task_overrides: dict[str, dict[str, Any]] = option(
        {}, "per task name: fine-tuning keys that replace `finetune:` in its own runs (epochs...)"
    )

    def validate(self) -> None:
        """Check the shared keys and every task by building the run configs they make."""
        if not self.tasks:
            raise ValueError("tasks: a suite needs at least one task")
        if self.seeds < 1:
            raise ValueError(f"seeds: must be >= 1, got {self.seeds}")
        bad = sorted(set(self.finetune) & set(PER_RUN_KEYS))
        if bad:
            raise ValueError(f"finetune.{bad[0]}: set per run by the suite; remove it")
        names = [task.get("name") for task in self.tasks]
        if JOINT in names:
            raise ValueError(f"tasks: the name {JOINT!r} is reserved for the joint run")
        for name, keys in self.task_overrides.items():
            if name not in names:
                raise ValueError(f"task_overrides.{name}: no such task; tasks: {names}")
            bad = sorted(set(keys) & set(PER_RUN_KEYS))
            if bad:
                raise ValueError(f"task_overrides.{name}.{bad[0]}: set per run by the suite")
        for index, task in enumerate(self.tasks):
            try:
                self.run_config([task], encoder="unchecked", seed=0, output_dir="unchecked")
            except ValueError as error:
                raise ValueError(f"tasks[{index}] ({task.get('name')}): {error}") from None

    def task_names(self) -> list[str]:
        """The tasks' names, in suite order."""
        return [task["name"] for task in self.tasks]

    def run_config(
        self, tasks: list[dict[str, Any]], encoder: str, seed: int, output_dir: str
    ) -> dict[str, Any]:
        """The fine-tuning config (as a dict, validated) of one run of this suite: the shared
        `finetune:` keys, then a single-task run's `task_overrides`."""
        from ernie_style.finetune.config import FinetuneConfig

        overrides = self.task_overrides.get(tasks[0]["name"], {}) if len(tasks) == 1 else {}
        data = merged(self.finetune, overrides)
        data |= {"encoder": encoder, "seed": seed, "output_dir": output_dir}
        data["tasks"] = tasks
        from_dict(FinetuneConfig, data)  # errors name the key
        return data


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` applied; nested sections (`optim:`) are merged key by key."""
    out = dict(base)
    for key, value in overrides.items():
        both_dicts = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merged(out[key], value) if both_dicts else value
    return out


def load_suite(path: str | Path) -> SuiteConfig:
    """Read and validate a suite file; errors name the file and key, missing data files too."""
    path = Path(path)
    try:
        suite = from_dict(SuiteConfig, read_yaml(path))
        for index, task in enumerate(suite.tasks):
            for split, file in (task.get("data") or {}).items():
                if file and not Path(file).is_file():
                    raise ValueError(f"tasks[{index}].data.{split}: {file} does not exist")
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return suite


def materialise_encoder(spec: str, out: Path, seed: int, tokenizer: str | None = None) -> Path:
    """The encoder directory for `spec`: DIR as it is, or a randomly initialised one
    (`preset:NAME` with `tokenizer`, `random:DIR`) written once under `out`."""
    kind, _, value = spec.partition(":")
    if kind not in ("preset", "random") or not value:
        path = Path(spec)
        if not (path / "config.json").is_file():
            raise ValueError(f"--encoder {spec}: not an encoder directory (no config.json)")
        return path
    target = out / "encoders" / f"{kind}-{Path(value).name}-seed-{seed}"
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import ErnieModel

    from ernie_style.tokenizer import load_tokenizer

    if kind == "preset":
        from ernie_style.pretrain.model import build_backbone_config

        if not tokenizer:
            raise ValueError(f"--encoder {spec}: a preset needs --tokenizer DIR (its vocabulary)")
        tok = load_tokenizer(tokenizer, key="--tokenizer")
        config = build_backbone_config(value, vocab_size=len(tok), pad_token_id=tok.pad_token_id)
    else:
        tok = load_tokenizer(value, key="--encoder")
    torch.manual_seed(seed)
    with atomic_dir(target) as tmp:
        if kind == "preset":
            ErnieModel(config).save_pretrained(str(tmp))
        else:
            _random_like(Path(value)).save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
    return target


def _random_like(source: Path) -> Any:
    """A randomly initialised model of `source`'s architecture (its config.json alone): an
    `ErnieModel` for BERT and ERNIE checkpoints, the stock masked-LM model of other families."""
    from transformers import AutoConfig, AutoModelForMaskedLM, ErnieModel

    from ernie_style.finetune.encoder_families import LAYOUTS
    from ernie_style.pretrain.init_from import encoder_config
    from ernie_style.untrusted import refuse_remote_code

    refuse_remote_code(source, "--encoder")
    raw = AutoConfig.from_pretrained(str(source), local_files_only=True, trust_remote_code=False)
    if raw.model_type in LAYOUTS:
        return AutoModelForMaskedLM.from_config(raw, trust_remote_code=False)
    return ErnieModel(encoder_config(source, key="--encoder"))  # the architecture, not weights


def run_dir(out: Path, task: str, seed: int) -> Path:
    """Where the fine-tuning run of `task` (or `joint`) and `seed` lives."""
    return out / "runs" / task / f"seed-{seed}"


def check_same_inputs(out: Path, record: dict[str, Any]) -> None:
    """Refuse to mix runs of another encoder or suite into `out`; record them the first time."""
    path = out / "suite_inputs.json"
    if path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(k for k in record if before.get(k) != record[k])
        if changed:
            raise ValueError(
                f"{out} holds runs of another {', '.join(changed)} ({path}); "
                "use another --output or delete it"
            )
    atomic_write(path, json.dumps(record, indent=1, sort_keys=True) + "\n")


def finetune_command(config_path: Path, run: Path, launcher: str = "") -> list[str]:
    """The child command of one run: `python -m ernie_style finetune`, or under `launcher`
    (e.g. `accelerate launch --num_processes 8`: several GPUs per run); resumes from the run's
    newest checkpoint when it has one (a run interrupted mid-way), starts fresh otherwise."""
    prefix = shlex.split(launcher) if launcher else [sys.executable]
    command = [*prefix, "-m", "ernie_style", "finetune", "--config", str(config_path)]
    return command + (["--resume", "auto"] if (run / "checkpoints").is_dir() else [])


def run_one(config: dict[str, Any], log: Path, launcher: str = "") -> float:
    """Run (or resume) one fine-tuning run in a child process; returns its wall seconds."""
    run = Path(config["output_dir"])
    run.parent.mkdir(parents=True, exist_ok=True)
    config_path = run.parent / f"{run.name}.yaml"
    atomic_write(config_path, yaml.safe_dump(config, sort_keys=False))
    started = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as handle:
        done = subprocess.run(
            finetune_command(config_path, run, launcher),
            stdout=handle,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if done.returncode:
        raise RuntimeError(f"fine-tuning {run} failed (exit {done.returncode}); see {log}")
    return time.perf_counter() - started


def planned_runs(suite: SuiteConfig, seeds: Sequence[int]) -> list[tuple[str, int]]:
    """(task or `joint`, seed) for every run of the suite, seed-major."""
    names = suite.task_names() + ([JOINT] if suite.joint else [])
    return [(name, seed) for seed in seeds for name in names]


def run_suite(
    suite: SuiteConfig,
    encoder: str,
    out: Path,
    seeds: Sequence[int],
    tokenizer: str | None = None,
    suite_path: str = "",
    launcher: str = "",
) -> list[tuple[str, int, Path]]:
    """Run (or resume) every (task, seed) of the suite on `encoder` that no other worker holds;
    returns the finished runs (by any worker), in plan order.

    Several workers may share `out` (one per GPU or core: `CUDA_VISIBLE_DEVICES=i ernie-style
    eval-suite ...` with the same arguments): each claims a run with a lock next to its folder
    (`claim_run`) before starting it and skips runs another live worker holds, so the runs are
    shared out without a coordinator. A run a worker left unfinished (killed) is unclaimed
    again and taken, resumed from its checkpoint, by whichever worker passes it next.
    """
    from tqdm.auto import tqdm

    out.mkdir(parents=True, exist_ok=True)
    record = {"encoder": encoder, "tokenizer": tokenizer, "suite": suite_path, "tasks": suite.tasks}
    with suite_mutex(out):
        check_same_inputs(
            out, record | {"finetune": suite.finetune, "task_overrides": suite.task_overrides}
        )
    plan = planned_runs(suite, seeds)
    bar = tqdm(total=len(plan), desc=f"suite {suite.name or suite_path}", unit="run")
    took = True
    while took:  # again until a pass takes nothing: picks up runs a killed worker left
        took = False
        for name, seed in plan:
            run = run_dir(out, name, seed)
            if is_finished(run):
                continue
            try:
                claim = claim_run(run)
            except RunLockedError:  # another worker runs it
                continue
            with claim:
                if is_finished(run):  # finished by another worker since we looked
                    continue
                bar.set_postfix_str(f"{name} seed {seed}")
                run_claimed(suite, encoder, out, name, seed, tokenizer, launcher)
                took = True
            bar.n = sum(is_finished(run_dir(out, n, s)) for n, s in plan)
            bar.refresh()
    bar.close()
    return [(n, s, run_dir(out, n, s)) for n, s in plan if is_finished(run_dir(out, n, s))]


def run_claimed(
    suite: SuiteConfig,
    encoder: str,
    out: Path,
    name: str,
    seed: int,
    tokenizer: str | None,
    launcher: str,
) -> None:
    """Fine-tune (or resume) the run of `name` and `seed`, which this worker has claimed."""
    run = run_dir(out, name, seed)
    with suite_mutex(out):  # two workers of one seed must not both write its random encoder
        path = materialise_encoder(encoder, out, seed, tokenizer)
    tasks = suite.tasks if name == JOINT else [t for t in suite.tasks if t["name"] == name]
    config = suite.run_config(tasks, str(path), seed, str(run))
    if tokenizer and not encoder.startswith("preset:"):
        config["tokenizer"] = tokenizer
    seconds = run_one(config, out / "logs" / f"{name}-seed-{seed}.log", launcher)
    if not is_finished(run):
        raise RuntimeError(f"fine-tuning {run} ended without writing {run / 'metrics.json'}")
    atomic_write(run / "suite_timing.json", json.dumps({"seconds": seconds}) + "\n")


def is_finished(run: Path) -> bool:
    """Whether the fine-tuning run in `run` has finished (it wrote its test metrics)."""
    return (run / "metrics.json").is_file()


def claim_run(run: Path) -> RunLock:
    """Take this worker's claim on `run` (a lock file beside it; the fine-tuning child locks the
    folder itself); raises `RunLockedError` naming the holder if another worker has it."""
    claim = RunLock(run, "eval-suite", what="suite run", path=run.parent / f".{run.name}.claim")
    return claim.acquire()


def unfinished_runs(out: Path, suite: SuiteConfig, seeds: Sequence[int]) -> list[str]:
    """The runs of the plan not finished yet, each as `task seed N` plus `(running: holder)`
    when another worker holds it now; a finished run whose worker has not yet recorded its
    timing (still holds the claim) counts as unfinished, so only the last worker summarises."""
    pending = []
    for name, seed in planned_runs(suite, seeds):
        run = run_dir(out, name, seed)
        try:
            claim_run(run).release()
            held = ""
        except RunLockedError as error:
            held = f" (running: {error})"
        if held or not is_finished(run):
            pending.append(f"{name} seed {seed}{held}")
    return pending


@contextmanager
def suite_mutex(out: Path) -> Iterator[None]:
    """Hold the suite folder's short-lived mutex (blocking): the input record and random
    encoders are written by one worker at a time."""
    with open(out / ".suite.mutex", "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
