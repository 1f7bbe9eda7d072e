import itertools

import numpy as np
import pytest

from ernie_style.pretrain.schedule import (
    ContinualSchedule,
    StageLR,
    anti_curriculum_stages,
    auto_allocation,
    explicit_allocation,
    growth_stages,
    pairwise_stages,
    set_allocation,
)

PAPER = {
    "knowledge_masking": [20_000, 10_000, 10_000, 10_000],
    "capitalization": [0, 30_000, 10_000, 10_000],
    "token_document_relation": [0, 0, 40_000, 10_000],
    "sentence_reordering": [0, 0, 0, 50_000],
}


def test_auto_allocation_reproduces_the_paper_table():
    names = list(PAPER)
    stages = auto_allocation(dict.fromkeys(names, 50_000), {n: i for i, n in enumerate(names)}, 4)
    table = {n: [stage.get(n, 0) for stage in stages] for n in names}
    assert table == PAPER


def test_auto_allocation_spends_each_budget_exactly_and_most_in_the_first_stage():
    budgets = {"a": 1000, "b": 777, "c": 31, "d": 5}
    stages = auto_allocation(budgets, {"a": 0, "b": 1, "c": 1, "d": 3}, 4)
    for name, budget in budgets.items():
        per_stage = [s.get(name, 0) for s in stages]
        assert sum(per_stage) == budget
        first = next(i for i, n in enumerate(per_stage) if n)
        assert per_stage[first] == max(per_stage)


@pytest.mark.parametrize("budget", [1, 2, 5, 6, 7, 9, 13])
def test_tiny_budgets_over_many_stages_never_get_a_negative_share(budget):
    # 7 stages: round(5 / 8) = 1 per later stage would leave 5 - 6 = -1 for the first.
    stages = auto_allocation({"a": budget}, {"a": 0}, 7)
    per_stage = [s.get("a", 0) for s in stages]
    assert min(per_stage) >= 0 and sum(per_stage) == budget
    assert per_stage[0] == max(per_stage)


def test_sampling_is_proportional_to_remaining_budget_and_spends_it():
    schedule = ContinualSchedule([{"a": 300, "b": 100}, {"a": 50, "b": 50}], seed=1)
    first_100 = [schedule.sample()[0] for _ in range(100)]
    assert 60 <= first_100.count("a") <= 90  # ~75% early on
    while schedule.stage == 0:
        schedule.sample()
    assert schedule.step == 400 and schedule.done[0] == {"a": 300, "b": 100}
    rest = [schedule.sample()[0] for _ in range(100)]
    assert rest.count("a") == 50 and schedule.finished
    with pytest.raises(StopIteration):
        schedule.sample()


def test_sampling_is_deterministic_and_resumes_exactly():
    plan = [{"a": 20}, {"a": 10, "b": 30}, {"a": 5, "b": 5, "c": 40}]
    full = ContinualSchedule(plan, seed=3)
    reference = [full.sample() for _ in range(full.total_steps)]
    part = ContinualSchedule(plan, seed=3)
    head = [part.sample() for _ in range(37)]
    resumed = ContinualSchedule(plan, seed=3)
    resumed.load_state_dict(part.state_dict())
    tail = [resumed.sample() for _ in range(resumed.total_steps - 37)]
    assert head + tail == reference


def test_mixed_steps_draw_distinct_tasks():
    schedule = ContinualSchedule([{"a": 10, "b": 10, "c": 10}], seed=0)
    for _ in range(5):
        picked = schedule.sample(tasks_per_step=2)
        assert len(picked) == len(set(picked)) == 2
    assert sum(schedule.done[0].values()) == 10


def test_resume_with_new_tasks_keeps_history_and_appends_stages():
    old = ContinualSchedule([{"a": 10}, {"a": 5, "b": 10}], seed=0)
    while not old.finished:
        old.sample()
    new = ContinualSchedule([{"a": 99}, {"a": 1, "b": 1}, {"a": 4, "b": 4, "c": 12}], seed=0)
    new.load_state_dict(old.state_dict())
    assert new.stages[:2] == old.stages  # history kept, not re-planned
    assert new.stage == 2 and new.remaining() == {"a": 4, "b": 4, "c": 12}


def test_resume_refuses_a_config_without_the_checkpoints_tasks():
    old = ContinualSchedule([{"a": 2, "z": 2}], seed=0)
    old.sample()
    with pytest.raises(ValueError, match="task 'z'"):
        ContinualSchedule([{"a": 4}], seed=0).load_state_dict(old.state_dict())


def test_explicit_allocation_and_plan_table():
    stages = explicit_allocation({"a": [5, 5], "b": [0, 7]})
    assert stages == [{"a": 5}, {"a": 5, "b": 7}]
    table = ContinualSchedule(stages).plan_table()
    assert "stage 2" in table and table.splitlines()[-1].split() == ["steps", "5", "12", "17"]
    with pytest.raises(ValueError, match="same number of stages"):
        explicit_allocation({"a": [1], "b": [1, 2]})


def test_lr_warms_up_and_decays_within_each_stage():
    schedule = ContinualSchedule([{"a": 100}, {"a": 50, "b": 50}])
    lr = StageLR(schedule, warmup_steps=10, kind="linear", per_stage=True)
    factors = np.array([lr.factor(s) for s in range(200)])
    assert factors[9] == pytest.approx(1.0) and factors[0] == pytest.approx(0.1)
    assert factors[99] < 0.02 and factors[100] == pytest.approx(0.1)  # restart at stage 2
    once = StageLR(schedule, warmup_steps=10, kind="cosine", per_stage=False)
    assert once.factor(100) > 0.4 and once.factor(199) < 0.01


def test_continued_pretraining_defaults_warm_up_once_and_no_short_stage_starts_at_the_peak():
    """Issue 25: with per-stage restarts a 1-step stage trained at the full LR from its first
    step; the continued-pretraining schedule (a share of the run, once) never starts at it."""
    schedule = ContinualSchedule([{"a": 8}, {"a": 1, "b": 3}, {"b": 0, "c": 1}], seed=0)
    assert [schedule.stage_length(s) for s in range(3)] == [8, 4, 1]
    restarted = StageLR(schedule, warmup_steps=100, kind="linear", per_stage=True)
    assert restarted.factor(12) == 1.0  # the old default: the 1-step stage at the peak
    continued = StageLR(schedule, None, "linear", per_stage=False, warmup_ratio=0.1)
    factors = [continued.factor(s) for s in range(13)]
    assert factors[0] == pytest.approx(0.5) and factors[1] == 1.0  # ceil(1.3) = 2 warm-up steps
    assert all(b <= a for a, b in itertools.pairwise(factors[1:]))  # then it decays


@pytest.mark.parametrize("k", [2, 3])
def test_with_several_tasks_per_step_stages_are_counted_in_steps(k):
    plan = [{"a": 30, "b": 6}, {"a": 10, "b": 20, "c": 25}]
    schedule = ContinualSchedule(plan, seed=4, tasks_per_step=k)
    lengths = [schedule.stage_length(s) for s in range(2)]
    assert lengths[0] == 30  # a's budget: b runs out after 6 shared steps
    assert lengths[1] < schedule.stage_iterations(1) == 55
    steps_seen = [0, 0]
    while not schedule.finished:
        steps_seen[schedule.stage] += 1
        schedule.sample(k)
    assert steps_seen == lengths and schedule.step == schedule.total_steps == sum(lengths)
    assert schedule.plan_table().splitlines()[-1].split()[1:] == [
        *map(str, lengths),
        str(sum(lengths)),
    ]
    # The LR decays to zero at the last step of each stage, not half-way (as when the phase
    # lengths counted iterations).
    from ernie_style.pretrain.schedule import StageLR

    lr = StageLR(ContinualSchedule(plan, seed=4, tasks_per_step=k), 2, "linear", True)
    assert lr.factor(lengths[0] - 1) < 0.05 and lr.factor(sum(lengths) - 1) < 0.05
    # A resumed schedule (loaded state) counts the same steps.
    resumed = ContinualSchedule(plan, seed=4, tasks_per_step=k)
    resumed.load_state_dict(schedule.state_dict())
    assert resumed.total_steps == schedule.total_steps


# ---- curricula ------------------------------------------------------------------------------
def test_pairwise_stages_are_each_task_then_every_pair_then_all():
    assert pairwise_stages(["a", "b", "c"]) == [
        ["a"], ["b"], ["c"], ["a", "b"], ["b", "c"], ["a", "c"], ["a", "b", "c"],
    ]  # fmt: skip
    assert pairwise_stages(["a", "b"]) == [["a"], ["b"], ["a", "b"]]
    assert pairwise_stages(["a"]) == [["a"]]
    four = pairwise_stages(list("abcd"))
    pairs = [frozenset(s) for s in four if len(s) == 2]
    assert len(four) == 4 + 6 + 1 and len(set(pairs)) == len(pairs) == 6


def test_growth_stages_give_erniess_automatic_allocation():
    names = list(PAPER)
    sets = growth_stages({n: i for i, n in enumerate(names)}, 4)
    assert sets == [names[:1], names[:2], names[:3], names]
    table = set_allocation(dict.fromkeys(names, 50_000), sets)
    assert {n: [stage.get(n, 0) for stage in table] for n in names} == PAPER


def test_set_allocation_spreads_like_auto_and_only_over_a_tasks_stages():
    sets = pairwise_stages(["a", "b", "c"])  # S = 7 stages
    stages = set_allocation({"a": 800, "b": 80, "c": 5}, sets)
    for task, budget in {"a": 800, "b": 80, "c": 5}.items():
        per_stage = [stage.get(task, 0) for stage in stages]
        assert sum(per_stage) == budget
        present = [s for s, tasks in enumerate(sets) if task in tasks]
        assert all(per_stage[s] == 0 for s in range(7) if s not in present)
        assert per_stage[present[0]] == max(per_stage)
    a = [stage.get("a", 0) for stage in stages]
    assert a == [800 - 3 * 100, 0, 0, 100, 0, 100, 100]  # 800 / (7 + 1) per later stage
    with pytest.raises(ValueError, match="task 'z' is in no stage"):
        set_allocation({"z": 3}, [["a"]])


def test_anti_curriculum_trains_the_hardest_first_then_everything():
    assert anti_curriculum_stages(["a", "b", "c"], ["c"]) == [["c"], ["a", "b", "c"]]
    stages = set_allocation({"a": 30, "b": 30, "c": 90}, anti_curriculum_stages("abc", ["c"]))
    assert stages == [{"c": 60}, {"a": 30, "b": 30, "c": 30}]
    with pytest.raises(ValueError, match="names every task"):
        anti_curriculum_stages(["a", "b"], ["a", "b"])
    with pytest.raises(ValueError, match="must be among"):
        anti_curriculum_stages(["a", "b"], ["x"])


def test_plan_table_lists_many_stages_one_per_line():
    # 11 stages: 120 / 12 = 10 per later stage; a is in 4 later ones (3 pairs and all).
    plan = set_allocation(dict.fromkeys("abcd", 120), pairwise_stages("abcd"))
    schedule = ContinualSchedule(plan)
    lines = schedule.plan_table().splitlines()
    assert len(lines) == 1 + 11 + 1
    assert lines[1].split() == ["stage", "1", "80", "a", "(80)"]
    assert lines[5].split() == ["stage", "5", "20", "a", "(10),", "b", "(10)"]
    assert lines[-1].split()[:2] == ["total", str(schedule.total_steps)] == ["total", "480"]
