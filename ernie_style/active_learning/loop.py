"""The annotation loop: select a batch from the pool, ingest the annotated batch.

**Annotation batch** (JSONL, one selected example per line, in selection order): the pool
record's fields (id, words or texts), then

* `labels`: `{task: label}`, pre-filled with the model's predictions; annotators correct these;
* `predictions`: `{task: prediction}`, the model's, untouched (absent without a model);
* `confidence`: `{task: float}`, the confidence the selection used (lower = harder);
* `selection`: `{batch, rank, strategy, method, passes, budget, seed, weights, task, tasks,
  model, pool}`, how the batch was made (`batch` is a content hash identifying it).

Label formats per task type: a tag list as long as the words (token tasks), a label name
(classification types), a number (regression), the index of the relevant candidate or one grade
per candidate (ranking).

**Labeled set** (`LABELED_DIR/TASK.jsonl`): one JSON line per example, `id`, the task's input
fields (`text_fields`; token tasks the words field; ranking `query_field`, `candidates_field`)
and its `label_field`, so a fine-tuning config can name the file as a task's `train` data.

**Loop state** (`LABELED_DIR/loop_state.json`): `{"version": 1, "labeled": {task: count},
"rounds": [...]}`; a round is one selected batch: `round` (1, 2, ...), `batch`,
`selected_at`, `strategy`, `method`, `passes`, `budget`, `seed`, `weights`, `task`, `tasks`,
`model`, `pool`, `selected` (ids in selection order), `ingested` (`{task: [ids added]}`),
`ingested_at` and `batch_files`. `select --labeled` records the round; `ingest` fills it in
(or creates it from the lines' `selection`). Every file is written atomically (temp + rename);
`ingest` writes its planned changes to `LABELED_DIR/.ingest-journal.json` first, and the next
`ingest` completes one that was killed half-way.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ernie_style.active_learning.pool import (
    ID_FIELD,
    Pool,
    PoolRecord,
    TaskSpec,
    format_errors,
    normalize_label,
    parse_words,
    read_pool,
    record_id,
    write_pool_without,
)
from ernie_style.fileio import atomic_write, pid_alive
from ernie_style.finetune.readers import DataError, read_records

STATE_FILE = "loop_state.json"
STATE_VERSION = 1
#: Write-ahead journal of an ingest in progress (see `ingest`).
JOURNAL_FILE = ".ingest-journal.json"
JOURNAL_VERSION = 1
#: How a round was selected (every round of the loop state has these keys; None if unknown).
ROUND_KEYS = (
    "strategy", "method", "passes", "budget", "seed", "weights", "task", "tasks", "model", "pool"
)  # fmt: skip
#: Keys the loop adds to a batch line (a pool must not use them as fields).
BATCH_KEYS = ("labels", "predictions", "confidence", "selection")


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def batch_id(ids: Sequence[str], settings: Mapping[str, Any]) -> str:
    """A short content hash of a batch: its ids (in order) and how it was selected."""
    key = json.dumps({"ids": list(ids), "settings": dict(settings)}, sort_keys=True, default=str)
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


# ---- the labeled set ----------------------------------------------------------------------
def labeled_path(labeled_dir: str | Path, task: str) -> Path:
    """Where the labeled examples of `task` live."""
    return Path(labeled_dir) / f"{task}.jsonl"


def labeled_ids(labeled_dir: str | Path, tasks: Iterable[str]) -> set[str]:
    """Ids labelled for any of `tasks` (their labeled files that exist)."""
    ids: set[str] = set()
    for task in tasks:
        path = labeled_path(labeled_dir, task)
        if path.is_file():
            ids |= {record_id(r[ID_FIELD]) or "" for _, r in read_records(path, [ID_FIELD])}
    return ids - {""}


def read_labeled(labeled_dir: str | Path, spec: TaskSpec) -> dict[str, tuple[str, Any]]:
    """Map id -> (FILE:LINE, normalised label) of a task's labeled file (empty if absent)."""
    path = labeled_path(labeled_dir, spec.name)
    if not path.is_file():
        return {}
    out: dict[str, tuple[str, Any]] = {}
    errors = []
    for where, record in read_records(path, [ID_FIELD, spec.label_field, *spec.fields]):
        key = record_id(record[ID_FIELD])
        try:
            if key is None:
                raise DataError(f"missing or empty {ID_FIELD!r}")
            size = _size(spec, record)
            label = normalize_label(spec, record[spec.label_field], size)
        except DataError as error:
            errors.append(f"{where}: {error}")
            continue
        if key in out and out[key][1] != label:
            errors.append(f"{where}: id {key!r} labelled differently at {out[key][0]}")
        out.setdefault(key, (where, label))
    if errors:
        raise DataError(format_errors(errors))
    return out


def _size(spec: TaskSpec, fields: Mapping[str, Any]) -> int | None:
    """Words (token tasks) or candidates (ranking) of a record, for checking its label."""
    name = spec.sized_field
    return None if name is None else len(parse_words("", name, fields[name]))


# ---- selection ----------------------------------------------------------------------------
@dataclass
class Selection:
    """How a batch is chosen (recorded in every batch line and in the loop state)."""

    strategy: str
    budget: int
    tasks: list[str]
    method: str | None = None
    passes: int | None = None
    seed: int = 0
    weights: list[float] | None = None
    task: str | None = None
    model: str | None = None
    pool: str | None = None

    def settings(self) -> dict[str, Any]:
        """The fields as a dict (JSON-ready)."""
        return dict(self.__dict__)

    def check(self) -> None:
        """Refuse an unknown strategy, a budget <= 0, bad weights or `task` (before scoring)."""
        from ernie_style.active_learning.selection import STRATEGIES

        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"--strategy: unknown {self.strategy!r}; choose one of {', '.join(STRATEGIES)}"
            )
        if self.budget <= 0:
            raise ValueError(f"--budget must be > 0, got {self.budget}")
        if self.weights is not None and len(self.weights) != len(self.tasks):
            raise ValueError(
                f"--weights: {len(self.weights)} weights for {len(self.tasks)} tasks {self.tasks}"
            )
        if self.task is not None and self.task not in self.tasks:
            raise ValueError(f"--task {self.task!r} is not one of the tasks {self.tasks}")


def select_indices(
    confidences: np.ndarray, candidates: Sequence[int], selection: Selection
) -> list[int]:
    """Pool row indices chosen among `candidates` (rows of `confidences` [n, T]), in selection
    order; a budget above the number of candidates selects them all."""
    from ernie_style.active_learning.selection import select

    selection.check()
    if not candidates:
        raise ValueError("the pool has no unlabelled examples left to select from")
    rows = np.asarray(candidates, dtype=np.int64)
    task = selection.tasks.index(selection.task) if selection.task else 0
    chosen = select(
        confidences[rows],
        min(selection.budget, len(rows)),
        selection.strategy,
        weights=selection.weights,
        seed=selection.seed,
        task=task,
    )
    return [int(rows[i]) for i in np.asarray(chosen).reshape(-1)]


def batch_lines(
    pool: Pool,
    indices: Sequence[int],
    selection: Selection,
    confidences: np.ndarray,
    predictions: Mapping[str, Sequence[Any]] | None = None,
) -> list[dict[str, Any]]:
    """The annotation batch's lines for pool rows `indices` (see the module docstring);
    `predictions[task][i]` belongs to pool row `indices[i]`."""
    ids = [pool.records[i].id for i in indices]
    meta = {"batch": batch_id(ids, selection.settings()), **selection.settings()}
    lines = []
    for rank, row in enumerate(indices):
        record = pool.records[row]
        clash = [k for k in BATCH_KEYS if k in record.fields]
        if clash:
            raise DataError(f"{record.where}: field(s) {clash} are reserved for the batch file")
        line = dict(record.fields) | {ID_FIELD: record.id}
        guesses = {t: predictions[t][rank] for t in selection.tasks} if predictions else {}
        line["labels"] = {t: guesses.get(t) for t in selection.tasks}
        if predictions:
            line["predictions"] = guesses
        line["confidence"] = {t: float(confidences[row, j]) for j, t in enumerate(selection.tasks)}
        line["selection"] = {**meta, "rank": rank}
        lines.append(line)
    return lines


def write_jsonl(path: str | Path, lines: Iterable[Mapping[str, Any]]) -> None:
    """Write JSON lines atomically (UTF-8, non-ASCII kept)."""
    text = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    atomic_write(Path(path), text)


# ---- the loop state -----------------------------------------------------------------------
def load_state(labeled_dir: str | Path) -> dict[str, Any]:
    """The loop state of a labeled directory (a fresh one if there is none yet)."""
    path = Path(labeled_dir) / STATE_FILE
    if not path.is_file():
        return {"version": STATE_VERSION, "labeled": {}, "rounds": []}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON: {error}") from error
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise ValueError(f"{path}: not a version-{STATE_VERSION} loop state")
    return state


def save_state(labeled_dir: str | Path, state: Mapping[str, Any]) -> None:
    """Write the loop state atomically."""
    atomic_write(Path(labeled_dir) / STATE_FILE, json.dumps(state, indent=2) + "\n")


def _find_round(state: dict[str, Any], batch: str) -> dict[str, Any] | None:
    return next((r for r in state["rounds"] if r["batch"] == batch), None)


def new_round(
    state: dict[str, Any], meta: Mapping[str, Any], ids: Sequence[str], selected_now: bool = True
) -> dict[str, Any]:
    """Append a round for a selected batch (`meta`: a line's `selection`); returns it.
    `selected_now`: False when the round is first seen at ingest (`selected_at` unknown)."""
    entry = {
        "round": len(state["rounds"]) + 1,
        "batch": meta["batch"],
        "selected_at": now() if selected_now else None,
    }
    entry |= {key: meta.get(key) for key in ROUND_KEYS}
    entry |= {"selected": list(ids), "ingested": {}, "ingested_at": None, "batch_files": []}
    state["rounds"].append(entry)
    return entry


def record_selection(labeled_dir: str | Path, lines: Sequence[Mapping[str, Any]]) -> int:
    """Record a written batch as a round of the loop state; returns its round number."""
    state = load_state(labeled_dir)
    meta = lines[0]["selection"]
    entry = _find_round(state, meta["batch"])
    if entry is None:
        entry = new_round(state, meta, [line[ID_FIELD] for line in lines])
        save_state(labeled_dir, state)
    return int(entry["round"])


# ---- ingest -------------------------------------------------------------------------------
@dataclass
class BatchItem:
    """One validated batch line: where, id, input fields, normalised labels, selection."""

    where: str
    id: str
    fields: dict[str, Any]
    labels: dict[str, Any]
    selection: dict[str, Any] | None = None


@dataclass
class IngestReport:
    """What an ingest changed."""

    added: dict[str, int] = field(default_factory=dict)
    already_labeled: int = 0
    removed_from_pool: int = 0
    rounds: list[int] = field(default_factory=list)


def _inputs(spec: TaskSpec, line: Mapping[str, Any], pool: PoolRecord | None) -> dict[str, Any]:
    """A task's input fields from the line (else the pool record); word lists parsed."""
    out = {}
    for name in spec.fields:
        if name in line:
            out[name] = line[name]
        elif pool is not None and name in pool.fields:
            out[name] = pool.fields[name]
        else:
            raise DataError(f"no field {name!r}")
    if spec.sized_field is not None:
        out[spec.sized_field] = parse_words("", spec.sized_field, out[spec.sized_field])
    return out


def _decode_line(raw: bytes) -> str:
    """A batch line as text; invalid UTF-8 is a `DataError` (naming the byte column)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"not UTF-8 text ({error.reason} at byte {error.start + 1})") from None


def _parse_json(line: str) -> Any:
    """`json.loads`, every failure (syntax, a number too long, nesting too deep) a `DataError`."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(f"invalid JSON: {error.msg} (column {error.colno})") from None
    except ValueError as error:  # e.g. an integer longer than Python's int_max_str_digits
        raise DataError(f"invalid JSON: {str(error).split(':')[0]}") from None
    except RecursionError:
        raise DataError("invalid JSON: nested too deeply") from None


def _check_line(
    where: str, line: Any, specs: Mapping[str, TaskSpec], pool: dict[str, PoolRecord] | None
) -> BatchItem:
    if not isinstance(line, dict):
        raise DataError(f"expected a JSON object, got {type(line).__name__}")
    key = record_id(line.get(ID_FIELD))
    if key is None:
        raise DataError(f"missing or empty {ID_FIELD!r}")
    labels = line.get("labels")
    if not isinstance(labels, dict):
        raise DataError("no 'labels' object ({task: label})")
    fields: dict[str, Any] = {}
    normal, problems = {}, []
    for name, spec in specs.items():
        try:
            inputs = _inputs(spec, line, pool.get(key) if pool else None)
            fields |= inputs
            normal[name] = normalize_label(spec, labels.get(name), _size(spec, inputs))
        except DataError as error:
            problems.append(f"task {name!r}: {error}")
    if problems:
        raise DataError("; ".join(problems))
    selection = line.get("selection") if isinstance(line.get("selection"), dict) else None
    if selection is not None and not isinstance(selection.get("batch", ""), str):
        raise DataError(f"'selection.batch' must be a string, got {selection['batch']!r}")
    return BatchItem(where, key, fields, normal, selection)


def read_batch(
    path: str | Path, specs: Mapping[str, TaskSpec], pool: Pool | None = None
) -> list[BatchItem]:
    """Validated items of an annotated batch; ALL bad lines are reported (FILE:LINE) in one
    `DataError`, so nothing is ingested from a file with any bad line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--batch {path}: no such file")
    by_id = {r.id: r for r in pool.records} if pool is not None else None
    items, errors, seen = [], [], {}
    # Lines end at "\n" only (as `json.dumps` writes them): U+2028 and friends may sit inside
    # a JSON string, and str.splitlines would cut the line there.
    for number, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        where = f"{path}:{number}"
        try:
            line = _decode_line(raw.removeprefix(b"\xef\xbb\xbf") if number == 1 else raw)
            if not line.strip():
                continue
            item = _check_line(where, _parse_json(line), specs, by_id)
        except DataError as error:
            errors.append(f"{where}: {error}")
            continue
        first = seen.get(item.id)
        if first is not None and first.labels != item.labels:
            errors.append(f"{where}: id {item.id!r} labelled differently at {first.where}")
        elif first is None:
            seen[item.id] = item
            items.append(item)
    if errors:
        header = f"{len(errors)} bad line(s) in {path}; nothing was ingested:"
        raise DataError("\n".join([header, *errors]))
    if not items:
        raise DataError(f"{path}: no annotated examples")
    return items


def _conflicts(
    items: Sequence[BatchItem], existing: Mapping[str, dict[str, tuple[str, Any]]]
) -> list[str]:
    errors = []
    for item in items:
        for task, label in item.labels.items():
            old = existing[task].get(item.id)
            if old is not None and old[1] != label:
                errors.append(
                    f"{item.where}: id {item.id!r} task {task!r}: label differs from the one "
                    f"already in the labeled set ({old[0]})"
                )
    return errors


def ingest(
    batch: str | Path,
    labeled_dir: str | Path,
    specs: Mapping[str, TaskSpec],
    pool_path: str | Path | None = None,
) -> IngestReport:
    """Validate an annotated batch and merge it into the labeled set (idempotent), remove its
    ids from the pool file and record the round(s) in the loop state. Relabelling an id with a
    different label is an error; nothing is written unless every line is good.

    Crash-safe: the changes are first written to a journal (`LABELED_DIR/.ingest-journal.json`);
    an ingest killed at any moment is completed by the next `ingest` of any batch, before it
    reads anything, so the labeled set never loses or duplicates a row."""
    labeled_dir = Path(labeled_dir)
    recovered = _finish_interrupted_ingest(labeled_dir) if labeled_dir.is_dir() else None
    if pool_path is not None:
        _remove_stale_temps(Path(pool_path).parent, f".{Path(pool_path).name}.tmp-*")
    pool = read_pool(pool_path) if pool_path is not None else None
    items = read_batch(batch, specs, pool)
    existing = {name: read_labeled(labeled_dir, spec) for name, spec in specs.items()}
    errors = _conflicts(items, existing)
    if pool is not None:
        in_pool = set(pool.ids)
        errors += [
            f"{i.where}: id {i.id!r} is neither in the pool {pool.path} nor labelled"
            for i in items
            if i.id not in in_pool and not all(i.id in existing[t] for t in specs)
        ]
    if errors:
        raise DataError(format_errors(errors))
    report = IngestReport()
    plan: dict[str, Any] = {
        "version": JOURNAL_VERSION,
        "batch": str(batch),
        "batch_path": str(Path(batch).resolve()),
        "stamp": now(),
        "labeled": {},
        "added": {},
        "counts": {},
        "pool": None if pool_path is None else str(Path(pool_path).resolve()),
        "remove": [],
        "rounds": [],
    }
    for name, spec in specs.items():
        new = [i for i in items if i.id not in existing[name]]
        plan["labeled"][name] = [_labeled_record(spec, i) for i in new]
        plan["added"][name] = [i.id for i in new]
        plan["counts"][name] = len(existing[name]) + len(new)
        report.added[name] = len(new)
    report.already_labeled = sum(all(i.id in existing[t] for t in specs) for i in items)
    if pool is not None:
        plan["remove"] = [i.id for i in items]
        report.removed_from_pool = len(set(pool.ids) & set(plan["remove"]))
    if any(plan["added"].values()):
        plan["rounds"] = _round_groups(items)
    elif not report.removed_from_pool:  # nothing to write: this batch is already merged
        if recovered is not None and recovered[0] == plan["batch_path"]:
            return recovered[1]  # ...by the journal of this batch's killed ingest, just now
        return report
    plan["report"] = {
        "added": report.added,
        "already_labeled": report.already_labeled,
        "removed_from_pool": report.removed_from_pool,
    }
    # Write-ahead: the journal holds every change; if this process dies below, the next ingest
    # replays it (each step is idempotent), so no row is lost, duplicated or left unrecorded.
    atomic_write(labeled_dir / JOURNAL_FILE, json.dumps(plan, ensure_ascii=False) + "\n")
    report.rounds = _apply_ingest(labeled_dir, plan)
    return report


def _labeled_record(spec: TaskSpec, item: BatchItem) -> dict[str, Any]:
    """The labeled-set line of `item` for one task: id, input fields, label."""
    record = {ID_FIELD: item.id} | {f: item.fields[f] for f in spec.fields}
    record[spec.label_field] = item.labels[spec.name]
    return record


def _round_groups(items: Sequence[BatchItem]) -> list[dict[str, Any]]:
    """The batch's ids grouped by the round that selected them (`selection.batch`; lines
    without one form a manual round named after the batch's ids)."""
    groups: dict[str, list[str]] = {}
    metas: dict[str, Mapping[str, Any]] = {}
    for item in items:
        meta = item.selection
        if meta is None or "batch" not in meta:
            meta = {"batch": "manual-" + batch_id([i.id for i in items], {})}
        groups.setdefault(meta["batch"], []).append(item.id)
        metas.setdefault(meta["batch"], meta)
    return [{"meta": dict(metas[key]), "ids": ids} for key, ids in groups.items()]


def _apply_ingest(labeled_dir: Path, plan: Mapping[str, Any]) -> list[int]:
    """Carry out an ingest journal (labeled files, pool, loop state), then delete it; every
    step is idempotent, so a replay after a kill at any point completes the merge exactly
    once. Returns the rounds recorded."""
    for task, records in plan["labeled"].items():
        if records:
            _append_labeled(labeled_dir, task, records)
    if plan["pool"] is not None and plan["remove"]:
        write_pool_without(plan["pool"], plan["remove"])
    rounds = _update_state(labeled_dir, plan) if plan["rounds"] else []
    (labeled_dir / JOURNAL_FILE).unlink(missing_ok=True)
    return rounds


def finish_interrupted_ingest(labeled_dir: str | Path) -> bool:
    """Complete an ingest killed half-way in `labeled_dir` (if any); True if there was one.
    `select` calls it so that a killed ingest's rows are not offered for annotation again."""
    return _finish_interrupted_ingest(Path(labeled_dir)) is not None


def _finish_interrupted_ingest(labeled_dir: Path) -> tuple[str, IngestReport] | None:
    """Complete an ingest that was killed half-way (its journal is still there): returns the
    batch it was ingesting and its report, or None. Also removes temp files left by killed
    writers."""
    _remove_stale_temps(labeled_dir, ".*.tmp-*")
    path = labeled_dir / JOURNAL_FILE
    if not path.is_file():
        return None
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{path}: unreadable journal of an interrupted ingest ({error}); check the labeled "
            "set and the pool, then delete it"
        ) from error
    if not isinstance(plan, dict) or plan.get("version") != JOURNAL_VERSION:
        raise ValueError(f"{path}: not a version-{JOURNAL_VERSION} ingest journal")
    rounds = _apply_ingest(labeled_dir, plan)
    return plan["batch_path"], IngestReport(**plan["report"], rounds=rounds)


def _remove_stale_temps(directory: Path, pattern: str) -> None:
    """Delete `pattern` temp files (`NAME.tmp-PID`) whose writer process no longer runs."""
    for path in directory.glob(pattern):
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(pid):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _append_labeled(labeled_dir: Path, task: str, records: Sequence[Mapping[str, Any]]) -> None:
    """Append the records whose id is not in the task's labeled file yet (idempotent)."""
    path = labeled_path(labeled_dir, task)
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    have = labeled_ids(labeled_dir, [task]) if text.strip() else set()
    fresh = [r for r in records if r[ID_FIELD] not in have]
    if not fresh:
        return
    if text and not text.endswith("\n"):
        text += "\n"
    text += "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in fresh)
    atomic_write(path, text)


def _update_state(labeled_dir: Path, plan: Mapping[str, Any]) -> list[int]:
    """Record an ingest journal's rounds in the loop state (idempotent); returns them."""
    state = load_state(labeled_dir)
    rounds = []
    for group in plan["rounds"]:
        entry = _find_round(state, group["meta"]["batch"])
        if entry is None:
            entry = new_round(state, group["meta"], group["ids"], selected_now=False)
        members = set(group["ids"])
        changed = False
        for task, ids in plan["added"].items():
            mine = [x for x in ids if x in members]
            if mine:
                done = entry["ingested"].setdefault(task, [])
                have = set(done)
                done.extend(x for x in mine if x not in have)
                changed = True
        if changed:
            entry["ingested_at"] = plan["stamp"]
            if plan["batch"] not in entry["batch_files"]:
                entry["batch_files"].append(plan["batch"])
        rounds.append(int(entry["round"]))
    for task, count in plan["counts"].items():
        state["labeled"][task] = count
    save_state(labeled_dir, state)
    return rounds
