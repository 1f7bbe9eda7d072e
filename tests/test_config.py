import dataclasses
from pathlib import Path

import pytest

from ernie_style.config import Override, apply_overrides, dump_yaml, load_config, option
from ernie_style.pretrain.config import PretrainConfig

BASE = [
    "data.corpus=somewhere",
    "tasks={knowledge_masking: {budget: 30}, capitalization: {budget: 20}}",
]


def test_overrides_are_parsed_as_yaml_values_and_keep_their_text():
    data = apply_overrides({}, ["a.b=3", "c=true", "d=[1, 2]", "e=hello"])
    assert data == {
        "a": {"b": Override(3, "3")},
        "c": Override(True, "true"),
        "d": Override([1, 2], "[1, 2]"),
        "e": Override("hello", "hello"),
    }


@pytest.mark.parametrize(
    ("override", "expected"),
    [("precision=no", "no"), ("precision=fp32", "fp32"), ("precision='no'", "no")],
)
def test_precision_overrides_work_however_they_are_written(override, expected):
    assert load_config(PretrainConfig, None, [*BASE, override]).precision == expected


def test_string_options_take_the_literal_text_of_an_override():
    config = load_config(
        PretrainConfig,
        None,
        [*BASE, "output_dir=yes", "data.tokenizer=off", "tasks.capitalization.options.flag=yes"],
    )
    assert config.output_dir == "yes" and config.data.tokenizer == "off"
    # Non-string options keep the YAML reading: a bool stays a bool, `null` is None.
    assert config.tasks["capitalization"].options == {"flag": True}
    config = load_config(
        PretrainConfig, None, [*BASE, "schedule.mixed_batches=yes", "data.tokenizer=null"]
    )
    assert config.schedule.mixed_batches is True and config.data.tokenizer is None
    with pytest.raises(ValueError, match="config key 'seed' must be int"):
        load_config(PretrainConfig, None, [*BASE, "seed=yes"])


def test_string_options_in_finetune_configs_take_the_literal_text_too(monkeypatch):
    from ernie_style.finetune.config import FinetuneConfig

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # the shipped config names its data relative to the repository
    config = load_config(
        FinetuneConfig,
        root / "configs" / "finetune" / "demo_multitask.yaml",
        ["encoder=on", "precision=no", "spacy_model=off"],
    )
    assert (config.encoder, config.precision, config.spacy_model) == ("on", "no", "off")


def test_a_precision_typo_is_one_line_naming_the_key_and_the_accepted_values():
    with pytest.raises(ValueError) as caught:
        load_config(PretrainConfig, None, [*BASE, "precision=fp23"])
    message = str(caught.value)
    assert "\n" not in message
    assert "config key 'precision' must be one of" in message and "'fp23'" in message
    for value in ("auto", "bf16", "fp16", "fp32", "no"):
        assert f"'{value}'" in message


def test_an_unquoted_no_in_a_yaml_file_says_to_quote_it(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("precision: no\n")
    with pytest.raises(ValueError, match=r"run\.yaml: .*'precision'.*got False.*quote the value"):
        load_config(PretrainConfig, path, BASE)


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "output_dir: runs/a\nseed: 1\noptim:\n  lr: 0.001\n" + "data:\n  corpus: c\n"
        "tasks:\n  capitalization:\n    budget: 10\n"
    )
    config = load_config(PretrainConfig, path, ["seed=5", "output_dir=runs/b"])
    assert (config.seed, config.output_dir, config.optim.lr) == (5, "runs/b", 0.001)
    assert config.tasks["capitalization"].budget == 10


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1", r"unknown config key\(s\) \['optim.lrr'\]"),
        (
            "tasks={capitalisation: {budget: 3}}",
            "unknown task; registered tasks: knowledge_masking",
        ),
        ("tasks={capitalization: {budget: 0}}", r"tasks\.capitalization\.budget must be > 0"),
        ("batch_size=-1", "batch_size must be > 0"),
        ("seed=abc", "config key 'seed' must be int"),
        ("precision=fp8", "config key 'precision' must be one of"),
        ("model.preset=huge", "model.preset 'huge'"),
    ],
)
def test_bad_values_are_errors_naming_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(PretrainConfig, None, [*BASE, override])


def test_bad_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("seed: [1,\n")
    with pytest.raises(ValueError, match=r"broken\.yaml: invalid YAML"):
        load_config(PretrainConfig, path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(PretrainConfig, tmp_path / "missing.yaml")


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("seed: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ValueError, match="invalid YAML"):
        load_config(PretrainConfig, path)


def test_auto_schedule_from_task_order_and_first_stage():
    config = load_config(
        PretrainConfig,
        None,
        [
            "data.corpus=c",
            "tasks={knowledge_masking: {budget: 40}, capitalization: {budget: 30, first_stage: 1}, "
            "sentence_reordering: {budget: 20}}",
        ],
    )
    schedule = config.build_schedule()
    assert len(schedule.stages) == 3
    assert schedule.stages[0] == {"knowledge_masking": 20, "capitalization": 14}


THREE_TASKS = (
    "tasks={knowledge_masking: {budget: 80}, capitalization: {budget: 40}, "
    "sentence_reordering: {budget: 40}}"
)


def test_curricula_build_their_stage_sets():
    def stages(*overrides):
        config = load_config(PretrainConfig, None, ["data.corpus=c", THREE_TASKS, *overrides])
        return [sorted(stage) for stage in config.build_schedule().stages]

    km, cap, sro = "knowledge_masking", "capitalization", "sentence_reordering"
    assert stages("schedule.stages=pairwise") == [
        [km], [cap], [sro], sorted([km, cap]), sorted([cap, sro]), sorted([km, sro]),
        sorted([km, cap, sro]),
    ]  # fmt: skip
    assert stages("schedule.stages=anti_curriculum", f"schedule.first_stage_tasks=[{sro}]") == [
        [sro], sorted([km, cap, sro]),
    ]  # fmt: skip
    explicit = f"schedule.stages=[[{cap}], [{km}, {cap}], [{sro}, {km}]]"
    assert stages(explicit) == [[cap], sorted([km, cap]), sorted([sro, km])]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["schedule.stages=spiral"], r"schedule\.stages: unknown curriculum 'spiral'"),
        (["schedule.stages=anti_curriculum"], r"schedule\.first_stage_tasks: name the task"),
        (
            ["schedule.stages=anti_curriculum", "schedule.first_stage_tasks=[nope]"],
            r"schedule\.first_stage_tasks: .*must be among",
        ),
        (["schedule.first_stage_tasks=[capitalization]"], "only for stages: anti_curriculum"),
        (["schedule.stages=[[capitalization], []]"], r"schedule\.stages\[1\]: a stage needs"),
        (["schedule.stages=[[capitalization, nope]]"], r"schedule\.stages\[0\]: \['nope'\]"),
        (
            ["schedule.stages=[[capitalization, capitalization]]"],
            r"schedule\.stages\[0\]: a task is listed twice",
        ),
        (
            ["schedule.stages=[[capitalization], [knowledge_masking]]"],
            r"tasks \['sentence_reordering'\] are in no stage",
        ),
        (
            ["schedule.stages=pairwise", "tasks.capitalization.first_stage=2"],
            r"tasks\.capitalization\.first_stage: schedule\.stages sets the stages",
        ),
    ],
)
def test_curriculum_errors_name_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(PretrainConfig, None, ["data.corpus=c", THREE_TASKS, *overrides])


def test_float_keys_accept_exponents_without_a_dot(tmp_path):
    from ernie_style.config import load_config
    from ernie_style.pretrain.config import PretrainConfig

    config = load_config(
        PretrainConfig, None, ["data.corpus=x", "optim.lr=3e-5", "tasks.capitalization.budget=5"]
    )
    assert config.optim.lr == 3e-5
    with pytest.raises(ValueError, match=r"optim\.lr.*must be float"):
        load_config(PretrainConfig, None, ["data.corpus=x", "optim.lr=fast"])


# ---- balancing_options: the strategy's typed Config, checked at load ------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["balancing=dwa", "balancing_options={temprature: 3}"],
            r"balancing_options\.temprature: unknown option for loss balancing strategy 'dwa'; "
            "valid: temperature",
        ),
        (
            ["balancing=gradnorm", "balancing_options.lr=fast"],
            "config key 'balancing_options.lr' must be float",
        ),
        (["balancing=dwa", "balancing_options.temperature=0"], r"balancing_options\.temperature"),
        (["balancing_options.temperature=2"], r"balancing_options\.temperature: unknown option"),
        (["balancing=magic"], "balancing: unknown strategy 'magic'; valid: equal, fixed"),
    ],
)
def test_balancing_options_are_checked_at_load_naming_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(PretrainConfig, None, [*BASE, *overrides])


def test_balancing_options_keep_their_yaml_shape_and_give_a_typed_config(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "data: {corpus: c}\ntasks: {capitalization: {budget: 10}}\n"
        "balancing: gradnorm\nbalancing_options:\n  alpha: 1\n  ema: 0.5\n"
    )
    config = load_config(PretrainConfig, path)
    assert config.balancing_options == {"alpha": 1, "ema": 0.5}  # as written
    typed = config.balancing_config()
    assert (typed.alpha, typed.lr, typed.ema) == (1.0, 0.025, 0.5)
    assert type(typed.alpha) is float
    (tmp_path / "again.yaml").write_text(dump_yaml(config))  # what a run directory keeps
    assert load_config(PretrainConfig, tmp_path / "again.yaml") == config
    with pytest.raises(ValueError, match=r"run\.yaml: balancing_options\.emma: unknown"):
        path.write_text(path.read_text().replace("ema:", "emma:"))
        load_config(PretrainConfig, path)


def test_a_custom_balancer_can_be_named_in_a_pretrain_config():
    from ernie_style.components import balancer_registry
    from ernie_style.train.balancing import LossBalancer, build_balancer, register_balancer

    @register_balancer("tripled")
    class TripledBalancer(LossBalancer):
        """Weight `factor` for every task."""

        @dataclasses.dataclass
        class Config:
            """Options of `tripled`."""

            factor: float = option(3.0, "the weight of every task")

        def __init__(self, tasks, reduce=None, *, factor: float = 3.0) -> None:
            super().__init__(reduce)
            self.factor = self._configure(factor=factor).factor
            self._add_tasks(tasks)

        def _weight(self, task: str) -> float:
            return self.factor

    try:
        config = load_config(
            PretrainConfig, None, [*BASE, "balancing=tripled", "balancing_options.factor=2"]
        )
        assert config.balancing_config() == TripledBalancer.Config(factor=2.0)
        balancer = build_balancer(config.balancing, list(config.tasks), config.balancing_options)
        assert balancer.weights() == {"knowledge_masking": 2.0, "capitalization": 2.0}
        typo = [*BASE, "balancing=tripled", "balancing_options.factr=2"]
        with pytest.raises(ValueError, match=r"balancing_options\.factr: unknown option"):
            load_config(PretrainConfig, None, typo)
    finally:
        balancer_registry.unregister("tripled")
