"""The fine-tuning config: defaults, validation messages naming the key, encoder helpers."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ernie_style.config import dump_yaml, load_config, option
from ernie_style.finetune.config import (
    BALANCING_STRATEGIES,
    SHARING_STRATEGIES,
    TASK_METRICS,
    TASK_TYPES,
    FinetuneConfig,
)


@pytest.fixture
def files(tmp_path, monkeypatch):
    """Empty data files in the working directory (paths in configs are relative to it)."""
    monkeypatch.chdir(tmp_path)
    for name in ("train.tsv", "dev.tsv", "tokens.jsonl", "rank.jsonl", "notes.txt"):
        (tmp_path / name).write_text("")
    return tmp_path


BASE = {
    "encoder": "enc",
    "tasks": [
        {
            "name": "sentiment",
            "type": "classification",
            "data": {"train": "train.tsv", "dev": "dev.tsv"},
            "text_fields": ["text"],
            "labels": ["neg", "pos"],
        },
        {
            "name": "pairs",
            "type": "pair_classification",
            "data": {"train": "train.tsv"},
            "text_fields": ["a", "b"],
            "labels": ["different", "same"],
        },
        {
            "name": "ner",
            "type": "token_classification",
            "data": {"train": "tokens.jsonl"},
            "text_fields": ["tokens"],
            "labels": ["O", "B-PER", "I-PER"],
        },
        {
            "name": "score",
            "type": "regression",
            "data": {"train": "train.tsv"},
            "text_fields": ["a", "b"],
            "label_field": "score",
        },
        {
            "name": "rank",
            "type": "ranking",
            "data": {"train": "rank.jsonl"},
            "query_field": "query",
            "candidates_field": "candidates",
        },
        {
            "name": "pos",
            "type": "token_classification",
            "labels": "silver:pos",
            "silver_source": "sentiment",
        },
    ],
}


def load(tmp_path: Path, data: dict) -> FinetuneConfig:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(FinetuneConfig, path)


def test_valid_config_loads_with_per_type_defaults(files):
    config = load(files, BASE)
    tasks = {t.name: t for t in config.tasks}
    assert [t.name for t in config.tasks] == ["sentiment", "pairs", "ner", "score", "rank", "pos"]
    assert tasks["sentiment"].metrics == ["accuracy", "f1_macro"]
    assert tasks["sentiment"].main_metric == "accuracy"
    assert tasks["sentiment"].label_field == "label"
    assert tasks["ner"].metrics == ["entity_f1"] and tasks["ner"].label_field == "tags"
    assert tasks["score"].metrics == ["pearson", "spearman"]
    assert tasks["rank"].metrics == ["mrr", "ndcg"] and tasks["rank"].main_metric == "mrr"
    assert tasks["pos"].metrics == ["accuracy", "f1_macro"]  # UPOS tags are not BIO
    assert tasks["pos"].is_silver and tasks["pos"].label_list is None
    assert tasks["sentiment"].label_list == ["neg", "pos"]
    assert config.tokenizer_path == "enc" and config.max_seq_len == 128
    assert (config.sampling, config.temperature, config.balancing, config.sharing) == (
        "proportional",
        2.0,
        "equal",
        "hard",
    )
    assert config.batch_size_of(tasks["rank"]) == 32
    assert config.task("pairs") is tasks["pairs"]
    (files / "again.yaml").write_text(dump_yaml(config))  # what a run directory keeps
    assert load_config(FinetuneConfig, files / "again.yaml") == config


def test_overrides_and_numeric_labels(files):
    data = copy.deepcopy(BASE)
    data["tasks"][0]["labels"] = [0, 1]
    data["tasks"][0]["batch_size"] = 4
    path = files / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    config = load_config(
        FinetuneConfig, path, ["sampling=temperature", "temperature=3", "tokenizer=tok"]
    )
    assert config.tasks[0].label_list == ["0", "1"]
    assert config.batch_size_of(config.tasks[0]) == 4
    assert (config.sampling, config.temperature, config.tokenizer_path) == (
        "temperature",
        3.0,
        "tok",
    )


def _set(data: dict, path: str, value) -> dict:
    data = copy.deepcopy(data)
    node = data
    parts = re.findall(r"\w+|\[\d+\]", path)
    for part in parts[:-1]:
        node = node[int(part[1:-1])] if part.startswith("[") else node[part]
    last = parts[-1]
    if value is _DELETE:
        del node[last]
    elif last.startswith("["):
        node[int(last[1:-1])] = value
    else:
        node[last] = value
    return data


_DELETE = object()
TYPES = "classification, pair_classification, regression, ranking, token_classification"


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            "tasks[1].type",
            "clasification",
            f"tasks[1].type: unknown type 'clasification'; choose one of {TYPES}",
        ),
        (
            "tasks[1].name",
            "sentiment",
            "tasks[1].name: duplicate task name 'sentiment' (also tasks[0])",
        ),
        ("tasks[0].name", "", "tasks[0].name is required"),
        ("tasks[0].type", _DELETE, "tasks[0].type is required; choose one of " + TYPES),
        ("tasks[0].name", "a b", "tasks[0].name: 'a b' may only hold letters"),
        ("tasks[0].colour", "red", "unknown config key(s) ['tasks[0].colour']"),
        (
            "tasks[0].data.validation",
            "dev.tsv",
            "unknown config key(s) ['tasks[0].data.validation']",
        ),
        (
            "tasks[0].labels",
            _DELETE,
            "tasks[0].labels: a label list is required for type classification",
        ),
        (
            "tasks[0].labels",
            ["pos"],
            "tasks[0].labels: at least 2 labels are required, got ['pos']",
        ),
        ("tasks[0].labels", ["a", "b", "a"], "tasks[0].labels: duplicate labels ['a']"),
        ("tasks[0].labels", "gold", "tasks[0].labels: 'gold' is not a label list nor one of"),
        ("tasks[3].labels", ["x", "y"], "tasks[3].labels: not used by regression tasks"),
        (
            "tasks[0].text_fields",
            [],
            "tasks[0].text_fields: classification needs 1 or 2 field(s), got []",
        ),
        (
            "tasks[1].text_fields",
            ["a"],
            "tasks[1].text_fields: pair_classification needs 2 field(s)",
        ),
        (
            "tasks[2].text_fields",
            ["a", "b"],
            "tasks[2].text_fields: token_classification needs 1 (the words field)",
        ),
        ("tasks[0].data.dev", "nope.tsv", "tasks[0].data.dev: nope.tsv does not exist"),
        (
            "tasks[0].data.train",
            "notes.txt",
            "tasks[0].data.train: notes.txt has an unsupported suffix",
        ),
        ("tasks[0].data.train", None, "tasks[0].data.train: required"),
        ("tasks[0].data.train", ".", "tasks[0].data.train: . is a directory but not a saved"),
        (
            "tasks[0].metrics",
            ["f1"],
            "tasks[0].metrics[0]: unknown metric 'f1' for classification; choose from accuracy",
        ),
        (
            "tasks[3].metrics",
            ["pearson", "accuracy"],
            "tasks[3].metrics[1]: unknown metric 'accuracy' for regression",
        ),
        ("tasks[0].metrics", [], "tasks[0].metrics: at least one metric is required"),
        (
            "tasks[0].main_metric",
            "mcc",
            "tasks[0].main_metric: 'mcc' is not one of metrics ['accuracy', 'f1_macro']",
        ),
        ("tasks[5].metrics", ["entity_f1"], "tasks[5].metrics[0]: entity_f1 needs BIO tags"),
        ("tasks[0].loss_weight", 0, "tasks[0].loss_weight must be > 0, got 0.0"),
        ("tasks[0].batch_size", 0, "tasks[0].batch_size must be > 0"),
        ("tasks[0].task_id", -1, "tasks[0].task_id must be >= 0"),
        ("tasks[0].task_id", "two", "config key 'tasks[0].task_id'"),
        ("tasks[4].query_field", None, "tasks[4].query_field: required for ranking tasks"),
        ("tasks[4].text_fields", ["q"], "tasks[4].text_fields: not used by ranking tasks"),
        ("tasks[0].query_field", "q", "tasks[0].query_field: only for ranking tasks"),
        ("tasks[5].silver_source", "nope", "tasks[5].silver_source: 'nope' is not another task"),
        ("tasks[5].silver_source", "pos", "tasks[5].silver_source: 'pos' is not another task"),
        ("tasks[5].silver_source", None, "tasks[5].silver_source: required for silver:pos"),
        (
            "tasks[5].silver_mix",
            "half",
            "tasks[5].silver_mix: unknown mix 'half'; choose one of silver, gold, both",
        ),
        (
            "tasks[5].data",
            {"train": "tokens.jsonl"},
            "tasks[5].data: not used with silver_mix 'silver'",
        ),
        (
            "tasks[5].text_fields",
            ["tokens"],
            "tasks[5].text_fields: not used with silver_mix 'silver'",
        ),
        (
            "tasks[5].type",
            "classification",
            "tasks[5].labels: silver:pos needs type token_classification",
        ),
        ("tasks[0].silver_source", "pairs", "tasks[0].silver_source: only for labels silver:pos"),
        ("tasks", [], "tasks: at least one task is required"),
        ("encoder", "", "encoder: required"),
        (
            "sampling",
            "random",
            "sampling: unknown value 'random'; choose one of proportional, temperature, uniform",
        ),
        (
            "balancing",
            "magic",
            "balancing: unknown value 'magic'; choose one of " + ", ".join(BALANCING_STRATEGIES),
        ),
        (
            "sharing",
            "sluice",
            "sharing: unknown value 'sluice'; choose one of " + ", ".join(SHARING_STRATEGIES),
        ),
        ("temperature", 0, "temperature must be > 0"),
        ("precision", "fp8", "config key 'precision' must be one of"),
        # Top-level optimizer keys (the old shape) are read as optim.* and named so.
        ("lr_schedule", "step", "config key 'optim.lr_schedule' must be one of"),
        ("warmup_ratio", 1.5, "warmup_ratio must be in [0, 1)"),
        ("epochs", 0, "epochs must be > 0"),
        ("max_seq_len", 4, "max_seq_len must be >= 8"),
        ("balancing_options", [1], "config key 'balancing_options' must be a mapping"),
    ],
)
def test_bad_values_name_the_key(files, path, value, message):
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        load(files, _set(BASE, path, value))
    assert str(error.value).startswith(str(files / "run.yaml") + ": ")


def test_silver_source_must_have_its_own_data(files):
    data = copy.deepcopy(BASE)
    data["tasks"].append(
        {
            "name": "ner2",
            "type": "token_classification",
            "labels": "silver:ner",
            "silver_source": "pos",
        }
    )
    with pytest.raises(ValueError, match=re.escape("tasks[6].silver_source: 'pos' has silver")):
        load(files, data)


def test_silver_gold_mix_needs_data_and_fields(files):
    data = _set(BASE, "tasks[5].silver_mix", "gold")
    data = _set(data, "tasks[5].silver_source", None)
    with pytest.raises(ValueError, match=re.escape("tasks[5].text_fields: token_classification")):
        load(files, data)
    data = _set(data, "tasks[5].text_fields", ["tokens"])
    with pytest.raises(ValueError, match=re.escape("tasks[5].data.train: required")):
        load(files, data)
    config = load(files, _set(data, "tasks[5].data", {"train": "tokens.jsonl"}))
    assert config.tasks[5].silver_mix == "gold"


def test_use_task_id_follows_the_encoder_config(files):
    config = load(files, BASE)
    with pytest.raises(ValueError, match=r"encoder: enc is not a model directory"):
        config.resolve_use_task_id()
    (files / "enc").mkdir()
    (files / "enc" / "config.json").write_text(json.dumps({"use_task_id": True}))
    assert config.resolve_use_task_id() is True
    (files / "enc" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert config.resolve_use_task_id() is False
    config.use_task_id = True
    assert config.resolve_use_task_id() is True


def test_every_metric_name_is_implemented():
    metrics = pytest.importorskip("ernie_style.finetune.metrics")
    names = {m for allowed in TASK_METRICS.values() for m in allowed}
    assert names <= set(metrics.METRICS)


# ---- balancing_options / sharing_options: the component's typed Config, checked at load -----
@pytest.mark.parametrize(
    ("updates", "message"),
    [
        (
            {"balancing": "dwa", "balancing_options": {"temprature": 3}},
            "balancing_options.temprature: unknown option for loss balancing strategy 'dwa'; "
            "valid: temperature",
        ),
        (
            {"balancing": "dtp", "balancing_options": {"kpi_from_loss": "yes"}},
            "config key 'balancing_options.kpi_from_loss' must be bool",
        ),
        (
            {"balancing": "fixed", "balancing_options": {"weights": {"ner": -1}}},
            "balancing_options.weights.ner must be a finite number in [0.0, inf]",
        ),
        (
            {"sharing": "mmoe", "sharing_options": {"num_expert": 2}},
            "sharing_options.num_expert: unknown option for sharing kind 'mmoe'; valid: dropout",
        ),
        (
            {"sharing": "ple", "sharing_options": {"levels": "two"}},
            "config key 'sharing_options.levels' must be int",
        ),
        (
            {"sharing": "cgc", "sharing_options": {"dropout": 1}},
            "sharing_options.dropout must be a finite number in [0.0, 1.0)",
        ),
        ({"sharing_options": {"num_experts": 2}}, "sharing_options.num_experts: unknown option"),
    ],
)
def test_component_options_are_checked_at_load_naming_the_key(files, updates, message):
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        load(files, {**BASE, **updates})
    assert str(error.value).startswith(str(files / "run.yaml") + ": ")


def test_component_options_keep_their_yaml_shape_and_give_typed_configs(files):
    config = load(
        files,
        {
            **BASE,
            "balancing": "fixed",
            "sharing": "ple",
            "sharing_options": {"levels": 1, "dropout": 0},
        },
    )
    assert config.balancing_options == {} and config.balancing_config().weights is None
    assert config.sharing_options == {"levels": 1, "dropout": 0}  # as written
    typed = config.sharing_config()
    assert (typed.levels, typed.dropout, typed.shared_experts) == (1, 0.0, 2)
    (files / "again.yaml").write_text(dump_yaml(config))  # what a run directory keeps
    assert load_config(FinetuneConfig, files / "again.yaml") == config
    overridden = load_config(
        FinetuneConfig, files / "again.yaml", ["sharing=mmoe", "sharing_options={num_experts: 3}"]
    )
    assert overridden.sharing_config().num_experts == 3


def test_names_come_from_the_registries():
    from ernie_style.components import balancer_registry, sharing_registry
    from ernie_style.finetune import config as config_module
    from ernie_style.finetune.heads import HEAD_TYPES
    from ernie_style.finetune.heads import TASK_TYPES as HEAD_TASK_TYPES

    assert balancer_registry.names() == BALANCING_STRATEGIES
    assert (
        SHARING_STRATEGIES
        == sharing_registry.names()
        == (
            "hard",
            "mmoe",
            "ple",
            "cgc",
            "soft",
            "cross_stitch",
        )
    )
    assert HEAD_TASK_TYPES is TASK_TYPES and tuple(HEAD_TYPES) == TASK_TYPES
    with pytest.raises(AttributeError, match="NO_SUCH_NAME"):
        config_module.NO_SUCH_NAME  # noqa: B018


def test_importing_the_config_module_imports_no_torch():
    code = (
        "import sys; import ernie_style.finetune.config; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_custom_components_can_be_named_in_a_finetune_config(files):
    import torch

    from ernie_style.components import balancer_registry, sharing_registry
    from ernie_style.finetune.sharing import SharingLayer, build_sharing, register_sharing
    from ernie_style.train.balancing import LossBalancer, build_balancer, register_balancer

    @register_balancer("capped")
    class CappedBalancer(LossBalancer):
        """Weight `cap` for every task."""

        @dataclasses.dataclass
        class Config:
            """Options of `capped`."""

            cap: float = option(1.0, "the weight of every task")

        def __init__(self, tasks, reduce=None, *, cap: float = 1.0) -> None:
            super().__init__(reduce)
            self.cap = self._configure(cap=cap).cap
            self._add_tasks(tasks)

        def _weight(self, task: str) -> float:
            return self.cap

    @register_sharing("doubled")
    class DoubledSharing(SharingLayer):
        """Every head reads twice the encoder output (plus `shift`)."""

        @dataclasses.dataclass
        class Config:
            """Options of `doubled`."""

            shift: float = option(0.0, "added to the output")

        def __init__(self, hidden_size: int, tasks, shift: float = 0.0) -> None:
            super().__init__(touch_unused=False)
            self.shift = shift
            for name in tasks:
                self.add_task(name)

        def _transform(self, task: str, x: torch.Tensor) -> torch.Tensor:
            return 2 * x + self.shift

    try:
        updates = {
            "balancing": "capped",
            "balancing_options": {"cap": 2},
            "sharing": "doubled",
            "sharing_options": {"shift": 1},
        }
        config = load(files, {**BASE, **updates})
        assert config.balancing_config() == CappedBalancer.Config(cap=2.0)
        assert config.sharing_config() == DoubledSharing.Config(shift=1.0)
        names = [t.name for t in config.tasks]
        balancer = build_balancer(config.balancing, names, config.balancing_options)
        assert set(balancer.weights().values()) == {2.0}
        layer = build_sharing(config.sharing, 4, names, **config.sharing_options)
        assert layer("ner", None, torch.ones(1, 4))[1].tolist() == [[3.0] * 4]
        with pytest.raises(ValueError, match=re.escape("sharing_options.shft: unknown option")):
            load(files, {**BASE, **updates, "sharing_options": {"shft": 1}})
        with pytest.raises(ValueError, match=re.escape("balancing_options.cp: unknown option")):
            load(files, {**BASE, **updates, "balancing_options": {"cp": 1}})
    finally:
        balancer_registry.unregister("capped")
        sharing_registry.unregister("doubled")
