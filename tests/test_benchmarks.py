"""The benchmark scripts' own arithmetic (their runs are benchmarks, not tests)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from time_to_loss import nanogpt_curve, time_to


def nanogpt_log(eval_every: int, steps: int, step_s: float, eval_s: float) -> list:
    """nanoGPT's output for a run with steady iterations, as (wall time, line) pairs."""
    lines, now = [], 100.0  # iteration 0 ends long after the start: it compiled
    for it in range(steps + 1):
        took = step_s
        if it % eval_every == 0:
            now += eval_s
            took += eval_s
            lines.append((now, f"step {it}: train loss 2.0000, val loss {3 - it / 1000:.4f}\n"))
        now += step_s
        if it % 10 == 0:
            lines.append((now, f"iter {it}: loss 2.0, time {took * 1e3:.2f}ms, mfu 1.00%\n"))
    return lines


def test_nanogpt_curve_clocks_training_steps_only() -> None:
    curve = nanogpt_curve(nanogpt_log(eval_every=250, steps=1000, step_s=0.01, eval_s=2.0))
    assert [step for _, step, _ in curve] == [250, 500, 750, 1000]
    for clock, step, loss in curve:  # evaluations (2 s each) and iteration 0 taken out
        assert clock == pytest.approx(step * 0.01, abs=1e-6)
        assert loss == pytest.approx(3 - step / 1000)
    assert time_to(curve, 2.5) == pytest.approx(5.0)
    assert time_to(curve, 1.0) == float("inf")


@pytest.mark.parametrize(
    "script",
    sorted(p.name for p in (Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py")),
)
def test_every_benchmark_script_parses_its_options(script: str) -> None:
    """A script that no longer matches the library's signatures fails before its first
    figure: each answers --help."""
    import subprocess

    path = Path(__file__).resolve().parents[1] / "benchmarks" / script
    done = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
