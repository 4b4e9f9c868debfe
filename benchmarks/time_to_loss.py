"""Time to a target val loss: train presets in turn and clock when each gets there.

    python benchmarks/time_to_loss.py --presets cpu-baby [OTHER] [--target 1.89] [--repeats 3]
                                      [--baseline-repeats N] [--eval-every 100]
                                      [--untimed-steps N] [--nanogpt DIR]
                                      [--png time_to_loss.png] [--json curves.json]

A preset may carry overrides, for experiments: `cpu-fast+optim.lr=2e-3+train.batch_size=24`.

Each run trains a preset from scratch on tiny shakespeare. Every `--eval-every` steps (and
at the last) the model is evaluated on the whole val split, every token once, with the
clock stopped: the training clock counts training steps only. `--untimed-steps N` runs the
first N steps before the clock starts (where a compiled model compiles; their time is
printed apart). A run's time to target is the training time at the first evaluation at or
under the target. Prints each run, the median (min-max) per preset, the ratio of the
medians when two runs' kinds are given, and draws all val-loss curves against training
time into one PNG.

The first preset is the baseline. If it never reaches the target, its whole training time
stands in for its time to target (it needs longer, so the printed ratio is an upper bound),
and the ratio at the baseline's own lowest loss is printed as well.

`--nanogpt DIR` makes nanoGPT itself the baseline: its shakespeare-char command
(`python train.py config/train_shakespeare_char.py`, plus `--nanogpt-args`) runs once in the
checkout DIR, on the corpus from tinygpt's cache. Its val losses are its own 200-batch
estimates, every 250 steps; its training time is the wall time from the end of its first
(compiling) step, less the time of its evaluations and checkpoint saves.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure

from tinygpt.config import RunConfig, merge, parse_overrides, preset_names, resolve
from tinygpt.data import corpora as data
from tinygpt.evaluate import split_loss
from tinygpt.runtime import cpu_description
from tinygpt.training.loop import advance, setup


def run_config(spec: str, seed: int) -> RunConfig:
    """The config of `PRESET+section.key=value+...` with the given seed."""
    preset, *settings = spec.split("+")
    return resolve(preset, overrides=merge(parse_overrides(settings), {"train": {"seed": seed}}))


def one_run(
    preset: str, seed: int, eval_every: int, untimed_steps: int = 0
) -> list[tuple[float, int, float]]:
    """[(training seconds, step, full val loss), ...] for one run of a preset."""
    config = run_config(preset, seed)
    session = setup(config)
    curve, clock = [], 0.0
    block, device = config.model.block_size, session.device
    while session.step < session.planned_steps:
        start = time.perf_counter()
        advance(session)
        took = time.perf_counter() - start
        if session.step <= untimed_steps:
            print(f"  {preset} seed {seed}: untimed step {session.step}, {took:.1f} s", flush=True)
        else:
            clock += took
        if session.step % eval_every == 0 or session.step == session.planned_steps:
            with torch.autocast(
                device.type, session.dtype or torch.float32, enabled=bool(session.dtype)
            ):  # eager: a compiled model would compile again for inference
                val = split_loss(session.saved_model, session.data.val, block, 64, device)
            curve.append((clock, session.step, val))
            print(
                f"  {preset} seed {seed}: step {session.step}, {clock:.2f} s, val {val:.4f}",
                flush=True,
            )
    return curve


NANOGPT_EVAL = re.compile(r"^step (\d+): train loss [\d.]+, val loss ([\d.]+)")
NANOGPT_ITER = re.compile(r"^iter (\d+): loss [\d.]+, time ([\d.]+)ms")


def nanogpt_run(checkout: Path, extra: list[str]) -> list[tuple[float, int, float]]:
    """Run nanoGPT's shakespeare-char recipe in its checkout (`extra`: its own overrides,
    e.g. --device=cpu --compile=False); its curve like one_run's."""
    prepared = checkout / "data" / "shakespeare_char"
    corpus = data.resolve_corpus("tinyshakespeare")  # tinygpt's cached copy
    shutil.copyfile(corpus, prepared / "input.txt")  # its prepare.py would download it
    python, env = sys.executable, {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run([python, "prepare.py"], cwd=prepared, check=True, env=env)
    command = [python, "train.py", "config/train_shakespeare_char.py", *extra]
    print(f"  nanoGPT: {' '.join(command)}", flush=True)
    stamped = []  # (wall time when the line came, line)
    with subprocess.Popen(
        command, cwd=checkout, env=env, stdout=subprocess.PIPE, text=True
    ) as process:
        for line in process.stdout:  # type: ignore[union-attr]
            stamped.append((time.perf_counter(), line))
            if NANOGPT_EVAL.match(line):
                print(f"  nanoGPT: {line.strip()}", flush=True)
    if process.returncode != 0:
        raise SystemExit(f"nanoGPT exited with status {process.returncode}")
    curve = nanogpt_curve(stamped)
    for clock, step, loss in curve:
        print(f"  nanoGPT: step {step}, {clock:.2f} s, val {loss:.4f}", flush=True)
    return curve


def nanogpt_curve(stamped: list[tuple[float, str]]) -> list[tuple[float, int, float]]:
    """[(training seconds, step, val loss), ...] from nanoGPT's output lines and the wall
    time each came at. It logs `iter N: ... time Xms` every few iterations (X: the iteration's
    own time, an evaluation before it included) and `step N: ... val loss V` before iteration
    N. The clock runs from the end of iteration 0 (which compiles), less each evaluation's
    excess over a plain iteration."""
    stamps: dict[int, float] = {}  # iteration -> wall time after it
    times: dict[int, float] = {}  # iteration -> its own time
    losses: dict[int, float] = {}  # iteration -> val loss before it
    for now, line in stamped:
        if match := NANOGPT_ITER.match(line):
            stamps[int(match[1])], times[int(match[1])] = now, float(match[2]) / 1e3
        elif match := NANOGPT_EVAL.match(line):
            losses[int(match[1])] = float(match[2])
    step_time = statistics.median(t for i, t in times.items() if i not in losses)
    curve = []
    for step, loss in sorted(losses.items()):
        if step == 0 or step not in stamps:
            continue
        evaluations = sum(times[e] - step_time for e in losses if 0 < e <= step and e in times)
        curve.append((stamps[step] - stamps[0] - evaluations, step, loss))
    return curve


def time_to(curve: list[tuple[float, int, float]], target: float) -> float:
    return next((t for t, _, loss in curve if loss <= target), math.inf)


def summary(values: list[float]) -> str:
    if any(math.isinf(v) for v in values):
        return "not reached in every run: " + ", ".join(f"{v:.1f}" for v in values)
    return f"{statistics.median(values):.1f} s (min {min(values):.1f}, max {max(values):.1f})"


def print_ratios(curves: dict[str, list], target: float) -> None:
    """Ratio of median times to target, second kind of run over the baseline (the first)."""
    baseline, other = curves
    base_runs, other_runs = curves[baseline], curves[other]
    base_time = statistics.median(time_to(c, target) for c in base_runs)
    other_time = statistics.median(time_to(c, target) for c in other_runs)
    note = ""
    if math.isinf(base_time):
        base_time = statistics.median(c[-1][0] for c in base_runs)
        note = f" (upper bound: {baseline} never reached {target}; its whole training time used)"
    print(f"ratio {other} / {baseline} at {target}: {other_time / base_time:.3f}{note}")
    base_low = statistics.median(min(v for _, _, v in c) for c in base_runs)
    base_time = statistics.median(time_to(c, base_low) for c in base_runs)
    other_time = statistics.median(time_to(c, base_low) for c in other_runs)
    print(
        f"ratio at {baseline}'s median lowest loss {base_low:.4f}: "
        f"{other_time:.1f} s / {base_time:.1f} s = {other_time / base_time:.3f}"
    )


def plot(
    curves: dict[str, list[list[tuple[float, int, float]]]], target: float, path: Path
) -> None:
    figure = Figure(figsize=(8, 5))
    axes = figure.subplots()
    for (preset, runs), color in zip(curves.items(), (f"C{i}" for i in range(10)), strict=False):
        for i, curve in enumerate(runs):
            axes.plot([t for t, _, _ in curve], [v for _, _, v in curve], color=color,
                      alpha=0.8, label=preset if i == 0 else None)  # fmt: skip
    axes.axhline(target, color="0.5", linestyle="--", label=f"target {target}")
    axes.set_xlabel("training time (s), evaluation excluded")
    axes.set_ylabel("val loss, whole split")
    axes.set_ylim(top=2.6)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["cpu-baby"])
    parser.add_argument("--target", type=float, default=1.89)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--baseline-repeats", type=int, help="runs of the first preset (default: --repeats)"
    )
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1337, help="first seed; repeats add 1")
    parser.add_argument(
        "--untimed-steps", type=int, default=0, help="steps before the clock starts (compiling)"
    )
    parser.add_argument("--nanogpt", type=Path, help="a nanoGPT checkout: its run is the baseline")
    parser.add_argument("--nanogpt-args", default="", help="overrides for nanoGPT's train.py")
    parser.add_argument("--png", type=Path, default=Path("time_to_loss.png"))
    parser.add_argument("--json", type=Path, help="also write every curve to this file")
    args = parser.parse_args()
    for spec in args.presets:
        if spec.split("+")[0] not in preset_names():
            parser.error(f"unknown preset in {spec!r} (known: {', '.join(preset_names())})")
    print(f"cpu: {cpu_description()}")
    if torch.cuda.is_available():
        print(f"gpu: {torch.cuda.get_device_name()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, target {args.target}")
    curves: dict[str, list] = {preset: [] for preset in args.presets}
    if args.nanogpt:
        curves = {"nanoGPT": [nanogpt_run(args.nanogpt, shlex.split(args.nanogpt_args))], **curves}
    baseline_repeats = args.repeats if args.baseline_repeats is None else args.baseline_repeats
    for repeat in range(args.repeats):  # presets alternate, so load drifts hit both alike
        for i, preset in enumerate(args.presets):
            if i > 0 or args.nanogpt or repeat < baseline_repeats:
                curve = one_run(preset, args.seed + repeat, args.eval_every, args.untimed_steps)
                curves[preset].append(curve)
    for preset, runs in curves.items():
        times = [time_to(curve, args.target) for curve in runs]
        print(f"{preset}: time to {args.target}: {summary(times)}")
        ended_under = sum(curve[-1][2] <= args.target for curve in runs)
        print(f"  {ended_under} of {len(runs)} runs end at or under {args.target}")
        median_end = statistics.median(curve[-1][2] for curve in runs)
        verdict = "met" if median_end <= args.target else "not met"
        print(f"  median val at the end {median_end:.4f}; goal, at most {args.target}: {verdict}")
        for curve in runs:
            (t, step, val), low = curve[-1], min(curve, key=lambda point: point[2])
            print(
                f"  end: step {step}, {t:.1f} s of training, val {val:.4f}"
                f" (lowest {low[2]:.4f} at step {low[1]}, {low[0]:.1f} s)"
            )
    if len(curves) == 2:
        print_ratios(curves, args.target)
    if args.json:
        args.json.write_text(json.dumps(curves))
        print(f"curves as JSON: {args.json}")
    plot(curves, args.target, args.png)
    print(f"curves: {args.png}")


if __name__ == "__main__":
    main()
