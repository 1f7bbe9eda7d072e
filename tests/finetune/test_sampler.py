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
