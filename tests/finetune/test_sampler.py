"""The fine-tuning task sampler: each strategy against its formula, and the draws follow it."""

from __future__ import annotations

import math

import pytest

from ernie_style.finetune.sampler import TaskSampler, task_probabilities

SIZES = {"big": 8000, "mid": 1000, "small": 125}


@pytest.mark.parametrize(
    ("strategy", "temperature", "power"),
    [
        ("proportional", 5.0, 1.0),
        ("temperature", 2.0, 0.5),
        ("temperature", 3.0, 1 / 3),
        ("uniform", 2.0, 0.0),
    ],
)
def test_probabilities_follow_the_formula(strategy, temperature, power):
    weights = {t: n**power for t, n in SIZES.items()}
    expected = {t: w / sum(weights.values()) for t, w in weights.items()}
    got = task_probabilities(SIZES, strategy, temperature)
    assert got == pytest.approx(expected, rel=1e-12)
    assert math.isclose(sum(got.values()), 1.0)


def test_temperature_one_is_proportional_and_a_large_one_nears_uniform():
    proportional = task_probabilities(SIZES, "proportional")
    assert task_probabilities(SIZES, "temperature", 1.0) == pytest.approx(proportional)
    hot = task_probabilities(SIZES, "temperature", 1e6)
    assert hot == pytest.approx(task_probabilities(SIZES, "uniform"), abs=1e-5)


@pytest.mark.parametrize(
    ("strategy", "temperature"), [("proportional", 1.0), ("temperature", 2.0), ("uniform", 1.0)]
)
def test_the_drawn_tasks_follow_the_probabilities(strategy, temperature):
    sampler = TaskSampler(SIZES, dict.fromkeys(SIZES, 8), strategy, temperature, seed=3)
    steps = 20_000
    counts = {t: 0 for t in SIZES}
    for step in range(steps):
        counts[sampler.task_at(step)] += 1
    for task, p in task_probabilities(SIZES, strategy, temperature).items():
        sd = math.sqrt(p * (1 - p) / steps)
        assert abs(counts[task] / steps - p) < 5 * sd, (task, counts[task] / steps, p)


def test_bad_strategy_and_empty_task_are_refused():
    with pytest.raises(ValueError, match="unknown strategy"):
        task_probabilities(SIZES, "annealed")
    with pytest.raises(ValueError, match="every task needs training examples"):
        task_probabilities({"a": 0}, "uniform")


def test_anti_curriculum_first_stage_draws_only_the_first_tasks():
    batches = {"big": 100, "mid": 100, "small": 25}  # 80 + 10 + 5 batches per epoch
    plain = TaskSampler(SIZES, batches, "proportional", 2.0, seed=4)
    anti = TaskSampler(
        SIZES, batches, "proportional", 2.0, seed=4, first_tasks=["small", "mid"], first_epochs=2
    )
    assert anti.first_tasks == ["mid", "small"] and anti.first_epoch_steps == 15
    assert anti.first_steps == 30 and anti.total_steps(3) == 30 + 3 * 95
    first = [anti.task_at(s) for s in range(30)]
    assert set(first) == {"mid", "small"}
    assert 12 <= first.count("mid") <= 29  # mid : small = 8 : 1 by size
    # Afterwards every task, drawn exactly as without a curriculum (the RNG is per step).
    assert [anti.task_at(s) for s in range(30, 300)] == [plain.task_at(s) for s in range(30, 300)]
    assert anti.progress(15) == (1, 1.0) and anti.progress(30) == (1, 2.0)
    assert anti.progress(30 + 95) == (2, 1.0) and plain.progress(95) == (1, 1.0)
    assert [anti.phase_of(s) for s in (0, 14, 15, 29, 30, 124, 125)] == [
        (1, 1), (1, 1), (1, 2), (1, 2), (2, 1), (2, 1), (2, 2),
    ]  # fmt: skip
    assert plain.phase_of(94) == (1, 1) and plain.phase_of(95) == (1, 2)
    ends = [d for d in range(1, 30 + 2 * 95 + 1) if anti.is_epoch_end(d)]
    assert ends == [15, 30, 125, 220]
    assert plain.first_steps == 0 and plain.total_steps(3) == 3 * 95
    with pytest.raises(ValueError, match=r"first-stage tasks \['nope'\]"):
        TaskSampler(SIZES, batches, "uniform", 2.0, seed=0, first_tasks=["nope"])
