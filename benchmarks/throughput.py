"""Training throughput of a preset: tokens/s and ms per optimizer step.

    python benchmarks/throughput.py --preset cpu-baby [--timed 50] [--warmup 10] [--plain]
                                    [OPTIONS]

Builds the preset's model and optimizer on tiny shakespeare and times whole training steps
(batch draw, forward, backward, clipping, optimizer) with no evaluation or checkpoints.
Prints the median and spread over the timed steps. Any config option may be overridden.

`--plain` also times a straightforward training loop, the lecture's (draw a batch, forward,
zero_grad, backward, clip, AdamW step), on a copy of the same model, alternating blocks of
steps between the two so that the machine's drift hits both alike: what the engine's own
work (schedules, finite checks, metrics, accumulation) costs or saves per step.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch

from tinygpt.cli import add_config_options, config_overrides
from tinygpt.config import RunConfig, preset_names, resolve
from tinygpt.data.batches import random_batch
from tinygpt.models import count_parameters
from tinygpt.training.loop import Session, setup, train_step


def plain_step(session: Session) -> Callable[[], None]:
    """One step of the lecture's loop on a copy of the session's model and optimizer."""
    model = copy.deepcopy(session.model)
    cfg = session.config
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2)
    )
    generator = torch.Generator().manual_seed(cfg.train.seed)

    def step() -> None:
        x, y = random_batch(
            session.data.train, cfg.train.batch_size, cfg.model.block_size, generator
        )
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        loss.item()  # the lecture prints it now and then; here every step, as the engine

    return step


def time_steps(step: Callable[[], object], count: int) -> list[float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        step()  # ends in .item(): the step is finished when it returns
        times.append((time.perf_counter() - start) * 1000)
    return times


def report(name: str, ms: list[float], tokens_per_step: int) -> None:
    ms = sorted(ms)
    median = statistics.median(ms)
    print(
        f"{name}: ms/step median {median:.2f} (p10 {ms[len(ms) // 10]:.2f}, "
        f"p90 {ms[9 * len(ms) // 10]:.2f}); tokens/s {tokens_per_step / median * 1000:,.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--preset", default="cpu-baby", choices=preset_names())
    parser.add_argument("--timed", type=int, default=50, help="timed steps")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--plain", action="store_true", help="also time a plain loop")
    add_config_options(parser, RunConfig())  # the help shows the built-in defaults
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
    engine = lambda: train_step(session)  # noqa: E731
    steps = {"tinygpt engine": engine}
    if args.plain:
        steps["plain loop"] = plain_step(session)
    for step in steps.values():
        time_steps(step, args.warmup)
    times: dict[str, list[float]] = {name: [] for name in steps}
    block = 10
    for _ in range(0, args.timed, block):  # alternate blocks of steps
        for name, step in steps.items():
            times[name] += time_steps(step, block)
    for name, ms in times.items():
        report(name, ms, tokens_per_step)
    if args.plain:
        ratio = statistics.median(times["plain loop"]) / statistics.median(times["tinygpt engine"])
        print(f"engine speed relative to the plain loop: {ratio:.3f}x (above 1: faster)")


if __name__ == "__main__":
    main()
