"""The benchmark scripts' own arithmetic (their runs are benchmarks, not tests)."""

from __future__ import annotations

import json
import os
import subprocess
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


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
HELP_OF_EACH = """
import contextlib, io, json, runpy, sys
answers = {}
for path in sys.argv[1:]:
    sys.argv, out = [path, "--help"], io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(path, run_name="__main__")
        answers[path] = "no exit"
    except SystemExit as exc:
        answers[path] = exc.code if "usage:" in out.getvalue() else "no usage"
print(json.dumps(answers))
"""


def test_every_benchmark_script_parses_its_options() -> None:
    """A script that no longer matches the library's signatures fails before its first
    figure: each answers --help (all in one process, which imports torch once)."""
    scripts = sorted(str(p) for p in BENCHMARKS.glob("*.py"))
    done = subprocess.run(
        [sys.executable, "-c", HELP_OF_EACH, *scripts],
        capture_output=True, text=True, cwd=BENCHMARKS,
        env={**os.environ, "PYTHONPATH": str(BENCHMARKS)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout.splitlines()[-1])
    assert len(answers) == len(scripts) > 5
    assert {Path(path).name: code for path, code in answers.items() if code != 0} == {}
