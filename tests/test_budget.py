"""Training to a time limit: the plan of a run's length, the schedule that follows it, and
runs that keep to it."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tinygpt.config import OptimConfig, RunConfig
from tinygpt.training.budget import TimeBudget
from tinygpt.training.loop import advance, setup, train_step
from tinygpt.training.optim import LrSchedule
from tinygpt.training.runs import resume, train

from .conftest import assert_same_weights, metrics, tiny_values

WSD = OptimConfig(lr=1e-2, min_lr=1e-4, schedule="wsd", warmup_steps=5, decay_fraction=0.5)


def test_the_plan_fits_the_limit_at_the_recent_speed() -> None:
    budget = TimeBudget(10.0, 1000)
    for seconds in (0.5, 0.5, *[0.1] * 8):
        budget.record(seconds)
    assert budget.seconds_per_step() == pytest.approx(0.1)  # the two first steps left out
    assert budget.plan(10, trained_s=1.8, seconds_per_step=0.1) == 10 + 80  # 9.8 s - 1.8 s left
    assert budget.plan(10, trained_s=1.0, seconds_per_step=0.001) == 1000  # at most steps
    assert budget.plan(60, trained_s=12.0, seconds_per_step=0.1) == 60  # out of time: now


def schedule(total: int) -> LrSchedule:
    return LrSchedule(torch.optim.SGD([torch.zeros(1)], lr=1e-2), WSD, total)


def test_a_new_length_before_the_decay_simply_takes_over() -> None:
    changed = schedule(100)
    changed.change_length(60, step=20)  # the decay starts at 50 for 100 steps, 30 for 60
    assert changed.bend is None
    assert [changed.scale_at(s) for s in range(60)] == [schedule(60).scale_at(s) for s in range(60)]


def test_a_new_length_in_the_decay_goes_on_from_the_rate_it_had() -> None:
    changed = schedule(100)
    before = changed.scale_at(70)  # 40% down the decay from step 50
    changed.change_length(80, step=70)
    assert changed.bend == (70, before)
    rates = [changed.scale_at(s) for s in range(70, 80)]
    assert rates[0] == before and rates == sorted(rates, reverse=True)
    floor = WSD.min_lr / WSD.lr
    assert rates[-1] - floor == pytest.approx((before - floor) / 10)  # one step from the floor
    # a length planned before the decay that a shorter plan has already passed bends too
    late = schedule(100)
    late.change_length(40, step=30)  # 40 steps would have decayed from step 20
    assert late.bend == (30, 1.0)


def time_limited(**train: object) -> RunConfig:
    wsd = {"schedule": "wsd", "decay_fraction": 0.5}
    return RunConfig.from_dict(
        tiny_values(optim=wsd, **{"steps": 400, "time_limit": 0.5, "eval_interval": 30, **train})
    )


def engine_clock(monkeypatch: pytest.MonkeyPatch, step_ms: object) -> None:
    """The training engine's clock: step i (counting from 0 in this process) takes
    step_ms(i) milliseconds, whatever the machine does."""
    state = {"now": 0.0, "reads": 0}

    def perf_counter() -> float:
        if state["reads"] % 2:  # read at the start and at the end of each step
            state["now"] += step_ms(state["reads"] // 2) / 1000  # type: ignore[operator]
        state["reads"] += 1
        return state["now"]

    monkeypatch.setattr("tinygpt.training.loop.time", SimpleNamespace(perf_counter=perf_counter))


def test_a_time_limited_run_is_the_run_of_its_planned_length(
    shakespeare, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine_clock(monkeypatch, lambda step: 5)
    out = io.StringIO()
    train(time_limited(), tmp_path / "limited", out=out)
    planned = json.loads((tmp_path / "limited" / "config.json").read_text())["train"]["steps"]
    assert planned == 98  # 0.5 s x 0.98 at 5 ms a step
    text = out.getvalue()
    assert "steps of 64 tokens, as many as fit in 0.5 s (at most 400)" in text
    assert "time limit 0.5 s: 98 steps in 0.5 s of training (5 ms a step)" in text
    assert "step 98: train loss" in text

    # the same weights, bit for bit, as a run told that length from the start ...
    train(time_limited(steps=planned, time_limit=0.0), tmp_path / "plain", out=io.StringIO())
    assert_same_weights(tmp_path / "limited", tmp_path / "plain")
    # ... and as a time-limited run stopped part-way and resumed
    train(time_limited(), tmp_path / "split", out=io.StringIO(), until=60)
    assert json.loads((tmp_path / "split" / "config.json").read_text())["train"]["steps"] == 400
    resume(tmp_path / "split", out=io.StringIO())
    assert_same_weights(tmp_path / "limited", tmp_path / "split")


def test_a_machine_that_slows_down_shortens_the_run_and_the_rate_still_lands(
    shakespeare, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine_clock(monkeypatch, lambda step: 5 if step < 150 else 10)  # twice as slow from 150
    config = time_limited(steps=1000, time_limit=2.0, eval_interval=100)
    train(config, tmp_path / "run", out=io.StringIO())
    steps = [line for line in metrics(tmp_path / "run") if "lr" in line]
    end = steps[-1]["step"]
    assert end == 150 + round((1.96 - 0.75) / 0.010)  # 392 planned at first; what fits
    rates = [line["lr"] for line in steps]
    assert rates == sorted(rates, reverse=True)  # the decay bent, it never jumped up
    assert rates[-1] < 1.5 * config.optim.min_lr  # and it ends at its floor, at the new end


def test_without_a_limit_the_length_is_the_configs(shakespeare) -> None:
    session = setup(time_limited(time_limit=0.0))
    assert session.budget is None and session.planned_steps == 400


def test_a_step_alone_plans_nothing_the_run_s_advance_plans(
    shakespeare, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train_step is one optimizer step; the time limit's planning is advance's."""
    engine_clock(monkeypatch, lambda step: 5)
    config = time_limited(time_limit=0.1)  # 0.098 s at 5 ms a step: 19 steps
    stepped, advanced = setup(config), setup(config)
    for _ in range(40):
        train_step(stepped)
    assert stepped.planned_steps == 400 and stepped.budget is not None
    while advanced.step < advanced.planned_steps:
        advance(advanced)
    assert advanced.step == 19 and advanced.budget is None
    assert advanced.config.train.steps == 19
