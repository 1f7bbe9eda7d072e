"""`ernie-style select`: choose the next batch to annotate from an unlabeled pool.

ernie-style select --model RUN_DIR --pool POOL.jsonl --tasks ner,pos --strategy NAME \\
    --budget 50 --output batch.jsonl [--method ec|da] [--weights 1,2] [--seed 0] [--labeled DIR]
ernie-style select --confidences SCORES.npy --pool POOL.jsonl --tasks ner,pos ...

The model (a fine-tuning run directory) scores every unlabelled pool example per task (EC:
entropy, DA: dropout agreement); `--confidences` reuses scores saved with `--save-confidences`
(one row per pool record, one column per task). The batch file (JSONL) holds the selected
examples with the model's predictions as pre-annotations and their confidences; see
`ernie_style.active_learning.loop` for its format and `ernie-style ingest` for the way back.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `select` subcommand."""
    from ernie_style.active_learning.selection import STRATEGIES
    from ernie_style.defaults import PRECISIONS

    parser = subparsers.add_parser("select", help="active learning: choose a batch to annotate")
    parser.add_argument("--model", type=Path, help="fine-tuning run directory (output_dir)")
    parser.add_argument("--pool", type=Path, required=True, help="unlabeled pool (id + inputs)")
    parser.add_argument("--tasks", help="comma-separated tasks (default: all the model's)")
    parser.add_argument("--strategy", required=True, help=" | ".join(STRATEGIES))
    parser.add_argument("--budget", type=int, required=True, help="examples to select")
    parser.add_argument("--output", type=Path, required=True, help="annotation batch (JSONL)")
    parser.add_argument(
        "--method", choices=("ec", "da"), help="confidence: ec (entropy; default) or da (dropout)"
    )
    parser.add_argument("--passes", type=int, default=10, help="DA: dropout passes (default 10)")
    parser.add_argument("--weights", help="comma-separated task weights, e.g. 1,2")
    parser.add_argument("--task", help="st-ec / st-da: the task to select by (default: first)")
    parser.add_argument("--seed", type=int, default=0, help="seed for DA and the strategy")
    parser.add_argument("--labeled", type=Path, help="labeled dir: its ids are not selected")
    parser.add_argument("--confidences", type=Path, help="precomputed confidences (.npy)")
    parser.add_argument("--save-confidences", type=Path, help="write the pool's scores (.npy)")
    parser.add_argument("--batch-size", type=int, default=32, help="inference batch size")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto (bf16 where native, else fp32) | bf16 | fp16 (GPU) | fp32 (= no)",
    )
    parser.set_defaults(func=run)


def _names(value: str | None) -> list[str]:
    return [x.strip() for x in (value or "").split(",") if x.strip()]


def _weights(value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(x) for x in _names(value)]
    except ValueError:
        raise ValueError(f"--weights {value!r}: give comma-separated numbers") from None


def _method(strategy: str, method: str | None) -> str:
    """The confidence kind: as given, else `da` for st-da and `ec` otherwise."""
    implied = {"st-ec": "ec", "st-da": "da"}.get(strategy)
    if method is not None and implied is not None and method != implied:
        raise ValueError(f"--strategy {strategy} selects by {implied.upper()}; drop --method")
    return method or implied or "ec"


def _load_confidences(path: Path, rows: int, tasks: list[str]) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"--confidences {path}: no such file")
    try:
        values = np.load(path, allow_pickle=False)
    except ValueError as error:
        raise ValueError(f"--confidences {path}: not a .npy array: {error}") from error
    if values.ndim == 1 and len(tasks) == 1:
        values = values[:, None]
    if values.shape != (rows, len(tasks)):
        raise ValueError(
            f"--confidences {path}: shape {values.shape}, expected ({rows}, {len(tasks)}) "
            f"(pool records x tasks {tasks})"
        )
    return values.astype(np.float64)


def run(args: argparse.Namespace) -> int:
    """Score (or load scores), select, write the batch (and record it with --labeled, which is
    locked meanwhile: one select or ingest at a time per labeled directory)."""
    from ernie_style.run_lock import locked_run

    if args.labeled is None:
        return _run(args)
    if not args.pool.is_file():
        raise FileNotFoundError(f"--pool {args.pool}: no such file")
    with locked_run(args.labeled, "select", what="--labeled"):
        from ernie_style.active_learning.loop import finish_interrupted_ingest

        finish_interrupted_ingest(args.labeled)  # a killed ingest's rows count as labelled
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from ernie_style.active_learning.loop import (
        Selection,
        batch_lines,
        labeled_ids,
        record_selection,
        select_indices,
        write_jsonl,
    )
    from ernie_style.active_learning.pool import read_pool

    if args.model is None and args.confidences is None:
        raise ValueError("give --model (a fine-tuning run) or --confidences (a .npy file)")
    args.method = _method(args.strategy, args.method)
    pool = read_pool(args.pool)
    tasks = _names(args.tasks)
    loaded = None
    if args.model is not None:
        from ernie_style.finetune.loading import load_finetuned

        loaded = load_finetuned(args.model, args.device)
        known = list(loaded[3])
        unknown = [t for t in tasks if t not in known]
        if unknown:
            raise ValueError(f"--tasks: {unknown} not in the model; its tasks are {known}")
        tasks = tasks or known
    if not tasks:
        raise ValueError("--tasks: required with --confidences and no --model")
    selection = Selection(
        strategy=args.strategy,
        budget=args.budget,
        tasks=tasks,
        method=None if args.confidences else args.method,
        passes=args.passes if args.confidences is None and args.method == "da" else None,
        seed=args.seed,
        weights=_weights(args.weights),
        task=args.task,
        model=str(args.model) if args.model else None,
        pool=str(args.pool),
    )
    selection.check()
    done = labeled_ids(args.labeled, tasks) if args.labeled else set()
    candidates = [i for i, key in enumerate(pool.ids) if key not in done]
    if not candidates:
        raise ValueError(f"--pool {args.pool}: every example is already labelled")
    scored: dict[str, list[Any]] | None = None
    if args.confidences is not None:
        confidences = _load_confidences(args.confidences, len(pool), tasks)
        bad = np.flatnonzero(~np.isfinite(confidences[candidates]).all(axis=1))
        if len(bad):
            raise ValueError(
                f"--confidences {args.confidences}: non-finite values for unlabelled pool "
                f"records {[pool.ids[candidates[i]] for i in bad[:5]]}"
            )
    else:
        confidences, scored = _score(loaded, pool, candidates, tasks, args)
    if args.save_confidences is not None:
        args.save_confidences.parent.mkdir(parents=True, exist_ok=True)
        np.save(args.save_confidences, confidences)
    chosen = select_indices(confidences, candidates, selection)
    predictions = None
    if scored is not None:
        where = {row: i for i, row in enumerate(candidates)}
        predictions = {t: [scored[t][where[row]] for row in chosen] for t in tasks}
    elif loaded is not None:
        predictions = _predict(loaded, pool.subset(chosen), tasks, args)
    lines = batch_lines(pool, chosen, selection, confidences, predictions)
    write_jsonl(args.output, lines)
    message = f"selected {len(lines)} of {len(candidates)} unlabelled examples -> {args.output}"
    if args.budget > len(candidates):
        message += f" (--budget {args.budget}: only {len(candidates)} were left)"
    if args.labeled is not None:
        message += f" (round {record_selection(args.labeled, lines)} in {args.labeled})"
    print(message)
    return 0


def _encode(loaded: Any, pool: Any, tasks: list[str]) -> dict[str, list[Any]]:
    from ernie_style.active_learning.pool import encode_pool

    _, tokenizer, config, _ = loaded
    return {t: encode_pool(pool, config.task(t), config, tokenizer) for t in tasks}


def _score(
    loaded: Any, pool: Any, candidates: list[int], tasks: list[str], args: argparse.Namespace
) -> tuple[np.ndarray, dict[str, list[Any]]]:
    """Confidences of every pool row (NaN on labelled rows) and the candidates' predictions."""
    from ernie_style.active_learning.scoring import score_pool

    model, _, _, shells = loaded
    encoded = _encode(loaded, pool.subset(candidates), tasks)
    scores = score_pool(
        model,
        shells,
        encoded,
        method=args.method,
        passes=args.passes,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
    )
    confidences = np.full((len(pool), len(tasks)), np.nan)
    confidences[candidates] = scores.confidences
    return confidences, scores.predictions


def _predict(
    loaded: Any, pool: Any, tasks: list[str], args: argparse.Namespace
) -> dict[str, list[Any]]:
    from ernie_style.active_learning.scoring import predict_pool

    model, _, _, shells = loaded
    return predict_pool(
        model,
        shells,
        _encode(loaded, pool, tasks),
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
    )
