"""Time to a target val loss: train presets in turn and clock when each gets there.

    python benchmarks/time_to_loss.py --presets cpu-baby [OTHER] [--target 1.89] [--repeats 3]
                                      [--baseline-repeats N] [--eval-every 100]
                                      [--png time_to_loss.png]

A preset may carry overrides, for experiments: `cpu-fast+optim.lr=2e-3+train.batch_size=24`.

Each run trains a preset from scratch on tiny shakespeare. Every `--eval-every` steps (and
at the last) the model is evaluated on the whole val split, every token once, with the
clock stopped: the training clock counts training steps only. A run's time to target is the
training time at the first evaluation at or under the target. Prints each run, the median
(min-max) per preset, the ratio of the medians when two presets are given, and draws all
val-loss curves against training time into one PNG.

With two presets, the first is the baseline. If it never reaches the target, its whole
training time stands in for its time to target (it needs longer, so the printed ratio is
an upper bound), and the ratio at the baseline's own final loss is printed as well.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure

from tinygpt.config import RunConfig, merge, parse_overrides, preset_names, resolve
from tinygpt.evaluate import split_loss
from tinygpt.runtime import cpu_description
from tinygpt.train import setup, train_step


def run_config(spec: str, seed: int) -> RunConfig:
    """The config of `PRESET+section.key=value+...` with the given seed."""
    preset, *settings = spec.split("+")
    return resolve(preset, overrides=merge(parse_overrides(settings), {"train": {"seed": seed}}))


def one_run(preset: str, seed: int, eval_every: int) -> list[tuple[float, int, float]]:
    """[(training seconds, step, full val loss), ...] for one run of a preset."""
    config = run_config(preset, seed)
    session = setup(config)
    curve, clock = [], 0.0
    block, device = config.model.block_size, session.device
    while session.step < config.train.steps:
        start = time.perf_counter()
        train_step(session)
        clock += time.perf_counter() - start
        if session.step % eval_every == 0 or session.step == config.train.steps:
            with torch.autocast(
                device.type, session.dtype or torch.float32, enabled=bool(session.dtype)
            ):
                val = split_loss(session.forward, session.data.val, block, 64, device)
            curve.append((clock, session.step, val))
            print(
                f"  {preset} seed {seed}: step {session.step}, {clock:.1f} s, val {val:.4f}",
                flush=True,
            )
    return curve


def time_to(curve: list[tuple[float, int, float]], target: float) -> float:
    return next((t for t, _, loss in curve if loss <= target), math.inf)


def summary(values: list[float]) -> str:
    if any(math.isinf(v) for v in values):
        return "not reached in every run: " + ", ".join(f"{v:.1f}" for v in values)
    return f"{statistics.median(values):.1f} s (min {min(values):.1f}, max {max(values):.1f})"


def print_ratios(curves: dict[str, list], presets: list[str], target: float) -> None:
    """Ratio of median times to target, second preset over the baseline (the first)."""
    baseline, other = presets
    base_runs, other_runs = curves[baseline], curves[other]
    base_time = statistics.median(time_to(c, target) for c in base_runs)
    other_time = statistics.median(time_to(c, target) for c in other_runs)
    note = ""
    if math.isinf(base_time):
        base_time = statistics.median(c[-1][0] for c in base_runs)
        note = f" (upper bound: {baseline} never reached {target}; its whole training time used)"
    print(f"ratio {other} / {baseline} at {target}: {other_time / base_time:.3f}{note}")
    base_final = statistics.median(c[-1][2] for c in base_runs)
    base_time = statistics.median(time_to(c, base_final) for c in base_runs)
    other_time = statistics.median(time_to(c, base_final) for c in other_runs)
    print(
        f"ratio at {baseline}'s median final loss {base_final:.4f}: "
        f"{other_time:.1f} s / {base_time:.1f} s = {other_time / base_time:.3f}"
    )


def plot(
    curves: dict[str, list[list[tuple[float, int, float]]]], target: float, path: Path
) -> None:
    figure = Figure(figsize=(8, 5))
    axes = figure.subplots()
    for (preset, runs), color in zip(curves.items(), ("C0", "C1", "C2", "C3"), strict=False):
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
    parser.add_argument("--png", type=Path, default=Path("time_to_loss.png"))
    args = parser.parse_args()
    for spec in args.presets:
        if spec.split("+")[0] not in preset_names():
            parser.error(f"unknown preset in {spec!r} (known: {', '.join(preset_names())})")
    print(f"cpu: {cpu_description()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, target {args.target}")
    curves: dict[str, list] = {preset: [] for preset in args.presets}
    baseline_repeats = args.repeats if args.baseline_repeats is None else args.baseline_repeats
    for repeat in range(args.repeats):  # presets alternate, so load drifts hit both alike
        for i, preset in enumerate(args.presets):
            if i > 0 or repeat < baseline_repeats:
                curves[preset].append(one_run(preset, args.seed + repeat, args.eval_every))
    for preset, runs in curves.items():
        times = [time_to(curve, args.target) for curve in runs]
        finals = [curve[-1] for curve in runs]
        print(f"{preset}: time to {args.target}: {summary(times)}")
        ended_under = sum(curve[-1][2] <= args.target for curve in runs)
        print(f"  {ended_under} of {len(runs)} runs end at or under {args.target}")
        for t, step, val in finals:
            print(f"  end: step {step}, {t:.1f} s of training, val {val:.4f}")
    if len(args.presets) == 2:
        print_ratios(curves, args.presets, args.target)
    plot(curves, args.target, args.png)
    print(f"curves: {args.png}")


if __name__ == "__main__":
    main()
