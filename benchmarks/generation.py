"""Generation speed with and without the KV cache, on the shapes of two presets.

    python benchmarks/generation.py [--presets cpu-baby shakespeare-char] [--new-tokens 500]
                                    [--dtype float32|bfloat16]

Random weights (speed does not depend on them), one sample, greedy decoding, on the CPU.
For each preset it prints: tokens/s over `--new-tokens` new tokens from a one-token prompt
(past `block_size` tokens both paths recompute the sliding window); and ms per token at a
full context (the step from block_size - 1 cached tokens to block_size, against a forward
pass over the whole window), the per-token cost that the cache removes. Medians of repeats.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tinygpt.config import SampleConfig, preset_names, resolve
from tinygpt.generate import Decoder, generate
from tinygpt.models import build_model
from tinygpt.runtime import cpu_description

VOCAB = 65


def tokens_per_s(model: torch.nn.Module, block: int, new: int, use_cache: bool) -> float:
    sampling = SampleConfig(max_new_tokens=new, temperature=0, use_cache=use_cache)
    start = time.perf_counter()
    for _ in generate(model, torch.zeros(1, 1, dtype=torch.long), block, sampling):
        pass
    return new / (time.perf_counter() - start)


@torch.inference_mode()  # as generate() runs
def ms_at_full_context(model: torch.nn.Module, block: int, use_cache: bool, repeats: int) -> float:
    prompt = torch.randint(VOCAB, (1, block - 1), generator=torch.Generator().manual_seed(0))
    token = torch.zeros(1, dtype=torch.long)
    times = []
    for _ in range(repeats):
        decoder = Decoder(model, block, use_cache)
        decoder.start(prompt)
        start = time.perf_counter()
        decoder.step(token)  # sees block tokens: from the cache, or recomputed
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["cpu-baby", "shakespeare-char"],
                        choices=preset_names())  # fmt: skip
    parser.add_argument("--new-tokens", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    print(f"cpu: {cpu_description()}")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, greedy, 1 sample, "
        f"{args.dtype} weights"
    )
    for preset in args.presets:
        config = resolve(preset).model
        torch.manual_seed(0)
        model = build_model(config, VOCAB).eval().to(getattr(torch, args.dtype))
        block = config.block_size
        for use_cache in (True, False):
            label = "cache   " if use_cache else "no cache"
            rates = [
                tokens_per_s(model, block, args.new_tokens, use_cache) for _ in range(args.repeats)
            ]
            full = ms_at_full_context(model, block, use_cache, repeats=max(5, 3 * args.repeats))
            print(
                f"{preset:<17} {label}: {statistics.median(rates):8,.0f} tokens/s over "
                f"{args.new_tokens} new (min {min(rates):,.0f}, max {max(rates):,.0f}); "
                f"{full:7.2f} ms/token at a full {block}-token context"
            )


if __name__ == "__main__":
    main()
