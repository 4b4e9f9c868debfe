"""Evaluation's forward passes: tokens scored a second against tokens a pass.

    python benchmarks/eval_pass.py [--presets cpu-fast cpu-5min ...] [--tokens 1024 4096 ...]
                                   [--rounds 4]

Evaluation stacks several batches into one forward pass (`evaluate.EVAL_TOKENS_PER_FORWARD`
tokens at most). For each preset's model (freshly initialised: the speed does not depend on
the weights) and each size, scores 64k tokens of random windows without gradients, the
sizes interleaved round by round so that the machine's drift falls on all of them alike;
the first round warms up and is not counted. Prints the CPU and the median thousands of
tokens a second for each size.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tinygpt.config import resolve
from tinygpt.models import build_model
from tinygpt.runtime import cpu_description

VOCAB = 65  # tiny shakespeare's characters
TOKENS_TIMED = 1 << 16


def tokens_per_second(model: torch.nn.Module, rows: int, block_size: int) -> float:
    inputs = torch.randint(VOCAB, (rows, block_size))
    targets = torch.randint(VOCAB, (rows, block_size))
    with torch.no_grad():
        model(inputs, targets)
        began, scored = time.perf_counter(), 0
        while scored < TOKENS_TIMED:
            model(inputs, targets)
            scored += rows * block_size
    return scored / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["cpu-fast", "cpu-5min", "cpu-baby"])
    parser.add_argument("--tokens", nargs="+", type=int, default=[1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--rounds", type=int, default=4, help="the first warms up, uncounted")
    args = parser.parse_args()
    print(f"cpu: {cpu_description()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    for preset in args.presets:
        config = resolve(preset)
        model = build_model(config.model, VOCAB).eval()
        block_size = config.model.block_size
        measured: dict[int, list[float]] = {tokens: [] for tokens in args.tokens}
        for round_ in range(args.rounds):
            for tokens in args.tokens:
                speed = tokens_per_second(model, max(1, tokens // block_size), block_size)
                if round_:
                    measured[tokens].append(speed)
        figures = ", ".join(
            f"{tokens}: {statistics.median(speeds) / 1000:.0f}k"
            for tokens, speeds in measured.items()
        )
        print(f"{preset} (context {block_size}): tokens/s by tokens a pass: {figures}", flush=True)


if __name__ == "__main__":
    main()
