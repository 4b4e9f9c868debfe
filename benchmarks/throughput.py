"""Training throughput of a preset: tokens/s and ms per optimizer step.

    python benchmarks/throughput.py --preset cpu-baby [--timed 50] [--warmup 10] [OPTIONS]

Builds the preset's model and optimizer on tiny shakespeare and times whole training steps
(batch draw, forward, backward, clipping, optimizer) with no evaluation or checkpoints.
Prints the median and spread over the timed steps. Any config option may be overridden.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tinygpt.cli import add_config_options, config_overrides
from tinygpt.config import preset_names, resolve
from tinygpt.models import count_parameters
from tinygpt.train import setup, train_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--preset", default="cpu-baby", choices=preset_names())
    parser.add_argument("--timed", type=int, default=50, help="timed steps")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    add_config_options(parser)
    args = parser.parse_args()
    config = resolve(args.preset, overrides=config_overrides(args))
    session = setup(config)
    tokens_per_step = (
        config.train.batch_size * config.train.grad_accum_steps * config.model.block_size
    )
    print(
        f"{args.preset}: {count_parameters(session.model):,} parameters, {tokens_per_step:,} "
        f"tokens/step, {session.device}, {torch.get_num_threads()} threads, "
        f"dtype {config.train.dtype}, compile {config.train.compile}, torch {torch.__version__}"
    )
    for _ in range(args.warmup):
        train_step(session)
    times = []
    for _ in range(args.timed):
        start = time.perf_counter()
        train_step(session)  # ends in .item(): the step is finished when it returns
        times.append(time.perf_counter() - start)
    ms = sorted(t * 1000 for t in times)
    median = statistics.median(ms)
    print(
        f"ms/step: median {median:.2f}"
        f" (p10 {ms[len(ms) // 10]:.2f}, p90 {ms[9 * len(ms) // 10]:.2f})"
    )
    print(f"tokens/s: {tokens_per_step / median * 1000:,.0f} (at the median step)")


if __name__ == "__main__":
    main()
