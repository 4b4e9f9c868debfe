"""What a user waits for: the whole default `tinygpt train`, and where its seconds go.

    python benchmarks/whole_command.py [--seeds 1337 1338 1339] [--repeats 5]
                                       [--baseline REV] [ARGS...]

Runs, as a user would from a shell (each a new process, on the corpus in tinygpt's cache):

- `tinygpt --help` and `tinygpt data`, `--repeats` times each: they import no torch;
- `python -c "import torch"`, then `torch._dynamo` (which a torch optimizer's first step
  imports; tinygpt's own optimizers and an uncompiled run do without it) and matplotlib's
  Figure on top of it: what the imports cost;
- `tinygpt train --out DIR --train.seed S` (plus ARGS) for each seed, and from the run's
  own records splits its wall time into training steps (the checkpoint's `training_s`),
  evaluations and checkpoints (the rest of its `elapsed_s`), and everything else (imports,
  data, model and optimizer set-up, the plot, the sample, exit), with the val loss on the
  whole split at the end.

`--baseline REV` also runs `tinygpt train` from the source of git revision REV (its `src`
folder, on PYTHONPATH), alternating with this checkout seed by seed (which goes first
alternates too), and prints both and the ratio of their medians: a change measured side by
side on the same machine at the same time.

Prints medians (min-max), the CPU, and whether each goal of the speed round holds: `--help`
and `data` under 0.5 s; the whole command's median at most `--goal-seconds` (6) with every
seed's val at most `--goal-val` (1.89).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from tinygpt.checkpoint import load_train_state
from tinygpt.rundir import RunDir, list_checkpoints
from tinygpt.runtime import cpu_description

TINYGPT = [sys.executable, "-m", "tinygpt"]
QUICK_GOAL_S = 0.5  # `--help` and `data` import no torch
IMPORTS = {
    "python": "pass",
    "torch": "import torch",
    "torch + torch._dynamo": "import torch, torch._dynamo",
    "torch + matplotlib": "import torch; from matplotlib.figure import Figure",
}


def wall(argv: list[str], env: dict[str, str] | None = None) -> float:
    began = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - began


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})"


def train_once(
    seed: int, out: Path, extra: list[str], env: dict[str, str] | None = None
) -> dict[str, float]:
    argv = [*TINYGPT, "train", "--out", str(out), "--train.seed", str(seed), *extra]
    seconds = wall(argv, env)
    state = load_train_state(list_checkpoints(out)[-1])
    last = [json.loads(line) for line in RunDir(out).metrics.open(encoding="utf-8")][-1]
    return {
        "whole": seconds,
        "training": state["training_s"],
        "evaluations": state["elapsed_s"] - state["training_s"],
        "rest": seconds - state["elapsed_s"],
        "steps": state["step"],
        "val": last.get("whole_val_loss", last.get("val_loss", float("nan"))),
    }


def source_of(revision: str, folder: Path) -> dict[str, str]:
    """The environment that runs tinygpt from `revision`'s source, unpacked into `folder`."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", revision, "src"], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return {**os.environ, "PYTHONPATH": str(folder / "src")}


def describe(run: dict[str, float]) -> str:
    return (
        f"{run['whole']:.2f} s = training steps {run['training']:.2f} + evaluations and "
        f"checkpoints {run['evaluations']:.2f} + the rest {run['rest']:.2f}; {run['steps']:.0f} "
        f"steps; val (whole split) {run['val']:.4f}"
    )


def summarise(name: str, runs: list[dict[str, float]], goal_s: float, goal_val: float) -> None:
    for part in ("whole", "training", "evaluations", "rest"):
        print(f"{name} {part}: {spread([run[part] for run in runs])}")
    ends = ", ".join(f"{run['val']:.4f}" for run in runs)
    print(f"{name} val at the end: {ends}")
    whole, worst = statistics.median(run["whole"] for run in runs), max(run["val"] for run in runs)
    verdict = "met" if whole <= goal_s and worst <= goal_val else "not met"
    print(
        f"{name} goal, the whole command in at most {goal_s:g} s with every seed at most "
        f"{goal_val:g}: {verdict} ({whole:.2f} s, worst val {worst:.4f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 1338, 1339])
    parser.add_argument("--repeats", type=int, default=5, help="of each quick command")
    parser.add_argument("--baseline", metavar="REV", help="git revision to run side by side")
    parser.add_argument("--goal-seconds", type=float, default=6.0, help="of the whole command")
    parser.add_argument("--goal-val", type=float, default=1.89, help="for every seed")
    args, extra = parser.parse_known_args()
    print(f"cpu: {cpu_description()}")
    for name, argv in {"tinygpt --help": ["--help"], "tinygpt data": ["data"]}.items():
        times = [wall([*TINYGPT, *argv]) for _ in range(args.repeats)]
        verdict = "met" if statistics.median(times) < QUICK_GOAL_S else "not met"
        print(f"{name}: {spread(times)}; goal under {QUICK_GOAL_S:g} s: {verdict}")
    for name, code in IMPORTS.items():
        times = [wall([sys.executable, "-c", code]) for _ in range(args.repeats)]
        print(f"python -c {code!r} ({name}): {spread(times)}")
    runs: dict[str, list[dict[str, float]]] = {"this checkout": []}
    with tempfile.TemporaryDirectory() as tmp:
        sources: dict[str, dict[str, str] | None] = {"this checkout": None}
        if args.baseline:
            sources[args.baseline] = source_of(args.baseline, Path(tmp) / "baseline")
            runs[args.baseline] = []
        for i, seed in enumerate(args.seeds):
            order = list(sources) if i % 2 == 0 else list(reversed(sources))
            for name in order:
                out = Path(tmp) / f"run-{i}-{len(runs[name])}-{list(sources).index(name)}"
                run = train_once(seed, out, extra, sources[name])
                runs[name].append(run)
                print(f"tinygpt train ({name}), seed {seed}: {describe(run)}", flush=True)
    for name, kind in runs.items():
        summarise(name, kind, args.goal_seconds, args.goal_val)
    if args.baseline:
        ratio = statistics.median(r["whole"] for r in runs["this checkout"]) / statistics.median(
            r["whole"] for r in runs[args.baseline]
        )
        print(f"whole command, this checkout against {args.baseline}: {ratio:.3f}x the time")


if __name__ == "__main__":
    main()
