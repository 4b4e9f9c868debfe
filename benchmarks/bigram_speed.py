"""Bigram training speed: steps/s and tokens/s of the `bigram` preset, and its final losses.

    python benchmarks/bigram_speed.py [--repeats 3] [--steps 10000] [--data NAME|FILE]

Each repeat trains the preset from scratch in a temporary run directory. The speed counts
training steps only (evaluation time is left out); the median and spread of the repeats
are printed, with the final train and val loss of each.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tinygpt.config import resolve
from tinygpt.rundir import RunDir
from tinygpt.training.runs import train


def one_run(steps: int, data: str) -> dict[str, float]:
    overrides = {"data": {"dataset": data}, "train": {"steps": steps, "sample_tokens": 0}}
    config = resolve(preset="bigram", overrides=overrides)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        final = train(config, Path(tmp) / "run", out=io.StringIO())
        wall = time.perf_counter() - start
        lines = [json.loads(line) for line in RunDir(Path(tmp) / "run").metrics.open()]
    train_lines = [line for line in lines if "tokens_per_s" in line]
    tokens_per_step = config.train.batch_size * config.model.block_size
    tokens_per_s = statistics.median(line["tokens_per_s"] for line in train_lines)
    return {
        "wall_s": wall,
        "steps_per_s": tokens_per_s / tokens_per_step,
        "tokens_per_s": tokens_per_s,
        "train_loss": final["train_loss"],
        "val_loss": final["val_loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--data", default="tinyshakespeare")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    runs = []
    for i in range(args.repeats):
        run = one_run(args.steps, args.data)
        runs.append(run)
        print(
            f"run {i + 1}: {run['steps_per_s']:,.0f} steps/s, {run['tokens_per_s']:,.0f} tokens/s,"
            f" wall {run['wall_s']:.1f} s, train loss {run['train_loss']:.4f},"
            f" val loss {run['val_loss']:.4f}"
        )
    for key in ("steps_per_s", "wall_s", "train_loss", "val_loss"):
        values = [run[key] for run in runs]
        print(
            f"{key}: median {statistics.median(values):,.4g}"
            f" (min {min(values):,.4g}, max {max(values):,.4g})"
        )


if __name__ == "__main__":
    main()
