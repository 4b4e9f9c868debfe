"""Training to a time limit: the plan of a run's length, and runs that follow one."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.test_train import TINY, assert_same_weights
from tinygpt.budget import TimeBudget
from tinygpt.config import OptimConfig, RunConfig
from tinygpt.runs import resume, train
from tinygpt.train import Session

WSD = OptimConfig(schedule="wsd", warmup_steps=5, decay_fraction=0.5)


def timed(budget: TimeBudget, *step_seconds: float) -> TimeBudget:
    for seconds in step_seconds:
        budget.record(seconds)
    return budget


def test_the_plan_fits_the_limit_at_the_recent_speed() -> None:
    budget = timed(TimeBudget(10.0, 1000, WSD), 0.5, 0.5, *[0.1] * 8)
    assert budget.seconds_per_step() == pytest.approx(0.1)  # the two first steps left out
    assert budget.plan(10, trained_s=1.8, seconds_per_step=0.1) == 10 + 79  # 9.7 s - 1.8 s
    assert budget.is_open(10) and budget.is_open(44)  # the decay starts at 89 - 44 = 45
    assert not budget.is_open(45)
    assert budget.plan(10, trained_s=1.0, seconds_per_step=0.001) == 1000  # at most steps


def test_a_plan_never_ends_before_the_steps_already_taken_at_a_stable_rate() -> None:
    budget = TimeBudget(10.0, 1000, WSD)
    # out of time at step 60: a plan of 60 would have started its decay at 30
    assert budget.plan(60, trained_s=9.9, seconds_per_step=0.1) == 120
    assert not budget.is_open(60)  # so it is fixed now, decaying from here to 120


def test_a_constant_rate_leaves_the_plan_open_to_the_end() -> None:
    budget = TimeBudget(1.0, 1000, OptimConfig(schedule="constant", warmup_steps=0))
    assert budget.plan(10, trained_s=0.2, seconds_per_step=0.01) == 10 + 77
    assert budget.is_open(86) and not budget.is_open(87)


def time_limited(**train: object) -> RunConfig:
    values = {
        **TINY,
        "optim": {"lr": 3e-3, "schedule": "wsd", "warmup_steps": 5, "decay_fraction": 0.5},
        "train": {**TINY["train"], "steps": 400, "time_limit": 0.5, "eval_interval": 30, **train},
    }
    return RunConfig.from_dict(values)


@pytest.fixture
def steps_of_5_ms(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every training step takes 5 ms on the engine's clock, whatever the machine does."""
    now = [0.0]

    def perf_counter() -> float:
        now[0] += 0.005  # read at the start and at the end of a step
        return now[0]

    monkeypatch.setattr("tinygpt.train.time", SimpleNamespace(perf_counter=perf_counter))


def test_a_time_limited_run_is_the_run_of_its_planned_length(
    shakespeare, tmp_path: Path, steps_of_5_ms: None
) -> None:
    out = io.StringIO()
    train(time_limited(), tmp_path / "limited", out=out)
    planned = json.loads((tmp_path / "limited" / "config.json").read_text())["train"]["steps"]
    assert 90 <= planned <= 97  # 0.5 s x 0.97 at 5 ms a step
    text = out.getvalue()
    assert "as many steps as fit in 0.5 s (at most 400 steps)" in text
    assert f"time limit 0.5 s: training for {planned} steps (5 ms a step so far)" in text
    assert f"step {planned}: train loss" in text

    # the same weights, bit for bit, as a run told that length from the start ...
    train(time_limited(steps=planned, time_limit=0.0), tmp_path / "plain", out=io.StringIO())
    assert_same_weights(tmp_path / "limited", tmp_path / "plain")
    # ... and as a time-limited run stopped after its plan was fixed, then resumed
    train(time_limited(), tmp_path / "split", out=io.StringIO(), until=60)
    resume(tmp_path / "split", out=io.StringIO())
    assert_same_weights(tmp_path / "limited", tmp_path / "split")


def test_a_run_stopped_before_its_plan_is_fixed_goes_on_planning(
    shakespeare, tmp_path: Path, steps_of_5_ms: None
) -> None:
    train(time_limited(), tmp_path / "split", out=io.StringIO(), until=20)
    saved = json.loads((tmp_path / "split" / "config.json").read_text())["train"]
    assert saved["steps"] == 400  # not planned yet: the limit and the most steps
    out = io.StringIO()
    resume(tmp_path / "split", out=out)
    assert "time limit 0.5 s: training for" in out.getvalue()
    train(time_limited(), tmp_path / "whole", out=io.StringIO())
    assert_same_weights(tmp_path / "whole", tmp_path / "split")  # the 0.1 s done count


def test_planned_steps_is_the_config_s_without_a_limit(shakespeare) -> None:
    from tinygpt.train import setup

    session: Session = setup(time_limited(time_limit=0.0))
    assert session.budget is None and session.planned_steps == 400


def test_a_plan_shorter_than_the_warmup_is_fixed_at_its_end() -> None:
    budget = TimeBudget(1.0, 1000, WSD)  # warmup 5 steps
    assert budget.plan(1, trained_s=0.77, seconds_per_step=0.1) == 1 + 2
    assert budget.is_open(2) and not budget.is_open(3)  # fixed at its end, still warming up
