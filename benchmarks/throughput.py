"""Training throughput of presets: tokens/s, ms per optimizer step, and how close the
model's arithmetic comes to the machine's limit.

    python benchmarks/throughput.py [--preset NAME ...] [--timed 50] [--warmup 10] [--plain]
                                    [--profile] [OPTIONS]

Builds each preset's model and optimizer on tiny shakespeare (default: every CPU preset)
and times whole training steps (batch draw, forward, backward, clipping, optimizer) with no
evaluation or checkpoints. Prints the median and spread over the timed steps. Any config
option may be overridden.

**How close to the limit.** Each preset's achieved model FLOP/s is the usual count, 6 x the
parameters that take part in matrix products (the blocks' matrices and the head; embedding
tables, which are looked up, do not) x tokens/s, plus attention's 12 x layers x channels x
context per token (scores and weighted values, forward and backward, the causal half not
taken off), as nanoGPT's `estimate_mfu` and PaLM's appendix count it. It is set against
the machine's matmul peak, measured here at the run's dtype and thread count (a 2048 x 2048
product), and against a product of the model's own shape (its tokens per step x channels by
channels x 4 channels, the MLP's first matrix). `--profile` lists where a step's time goes
(torch's profiler over a few steps, by operator): what the rest is when the figure is low.
Where cpu-10min is among the presets, says whether its shapes reach half the peak (the
speed round's goal).

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
from tinygpt.runtime import cpu_description
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


def report(name: str, ms: list[float], tokens_per_step: int) -> float:
    """Print the step times; return tokens/s at the median."""
    ms = sorted(ms)
    median = statistics.median(ms)
    tokens_per_s = tokens_per_step / median * 1000
    print(
        f"{name}: ms/step median {median:.2f} (p10 {ms[len(ms) // 10]:.2f}, "
        f"p90 {ms[9 * len(ms) // 10]:.2f}); tokens/s {tokens_per_s:,.0f}"
    )
    return tokens_per_s


CPU_PRESETS = ["cpu-baby", "cpu-fast", "cpu-5min", "cpu-10min", "cpu-bpe"]


def flops_per_token(model: torch.nn.Module, config: RunConfig) -> tuple[float, int]:
    """Training FLOPs per token by the usual count, and the parameters it multiplies by."""
    shared = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    matrices = sum(p.numel() for p in model.parameters() if id(p) in shared)
    m = config.model
    attention = 12 * m.n_layer * m.n_embd * m.block_size
    return 6 * matrices + attention, matrices


def matmul_flops(rows: int, inner: int, cols: int, dtype: torch.dtype, repeats: int) -> float:
    """FLOP/s of (rows, inner) @ (inner, cols) products, the median of `repeats` timings."""
    a, b = torch.randn(rows, inner, dtype=dtype), torch.randn(inner, cols, dtype=dtype)
    per_call = max(1, int(2e9 // (2 * rows * inner * cols)))  # about 2 GFLOP a timing
    torch.mm(a, b)  # warm
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(per_call):
            torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * rows * inner * cols * per_call / statistics.median(times)


def profile_steps(step: Callable[[], object], count: int = 5) -> None:
    """Where a step's time goes: torch's operators by their own CPU time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(count):
            step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    print(f"  profile, {count} steps, by operator (own CPU time):")
    for event in events[:12]:
        share = event.self_cpu_time_total / total
        print(f"    {share:6.1%}  {event.key} ({event.count // count} a step)")


def run_preset(preset: str, args: argparse.Namespace) -> dict[str, float]:
    config = resolve(preset, overrides=config_overrides(args))
    session = setup(config)
    model = session.model
    tokens_per_step = (
        config.train.batch_size * config.train.grad_accum_steps * config.model.block_size
    )
    print(
        f"\n{preset}: {count_parameters(model):,} parameters, {tokens_per_step:,} "
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
    tokens_per_s = {name: report(name, ms, tokens_per_step) for name, ms in times.items()}
    if args.plain:
        ratio = statistics.median(times["plain loop"]) / statistics.median(times["tinygpt engine"])
        print(f"engine speed relative to the plain loop: {ratio:.3f}x (above 1: faster)")
    per_token, matrices = flops_per_token(model, config)
    achieved = per_token * tokens_per_s["tinygpt engine"]
    c = config.model.n_embd
    shaped = matmul_flops(tokens_per_step, c, 4 * c, torch.float32, repeats=5)
    print(
        f"  model FLOPs: {per_token / 1e6:.3f} M a token (6 x {matrices:,} matrix parameters "
        f"+ attention); achieved {achieved / 1e9:.1f} GFLOP/s"
    )
    print(f"  a product of the model's shape ({tokens_per_step} x {c} by {4 * c}): "
          f"{shaped / 1e9:.1f} GFLOP/s")  # fmt: skip
    if args.profile:
        profile_steps(engine)
    return {"achieved": achieved, "shaped": shaped}


PEAK_GOAL = 0.5  # of the matmul peak, for cpu-10min's shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument(
        "--preset", nargs="+", default=CPU_PRESETS, choices=preset_names(), metavar="NAME",
        help=f"presets to time, in turn (default: {' '.join(CPU_PRESETS)})",
    )  # fmt: skip
    parser.add_argument("--timed", type=int, default=50, help="timed steps")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--plain", action="store_true", help="also time a plain loop")
    parser.add_argument("--profile", action="store_true", help="where a step's time goes")
    add_config_options(parser, RunConfig())  # the help shows the built-in defaults
    args = parser.parse_args()
    figures = {preset: run_preset(preset, args) for preset in args.preset}
    peak = matmul_flops(2048, 2048, 2048, torch.float32, repeats=5)
    print(f"\ncpu: {cpu_description()}; {torch.get_num_threads()} threads, float32")
    print(f"matmul peak (2048 x 2048 products): {peak / 1e9:.1f} GFLOP/s")
    print(f"{'preset':<12} {'GFLOP/s':>8} {'of peak':>8} {'of its shape':>13}")
    for preset, f in figures.items():
        print(
            f"{preset:<12} {f['achieved'] / 1e9:8.1f} {f['achieved'] / peak:8.1%} "
            f"{f['achieved'] / f['shaped']:13.1%}"
        )
    if "cpu-10min" in figures:
        share = figures["cpu-10min"]["achieved"] / peak
        verdict = "met" if share >= PEAK_GOAL else "not met"
        print(f"goal, cpu-10min's shapes at {PEAK_GOAL:.0%} of the peak or more: {verdict}")


if __name__ == "__main__":
    main()
