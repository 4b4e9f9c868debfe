"""Generation speed with and without the KV cache, on the shapes of two presets, and what
each window policy costs in quality.

    python benchmarks/generation.py [--presets cpu-baby shakespeare-char] [--new-tokens 500]
                                    [--dtype float32|bfloat16] [--batch 16]
                                    [--run RUN_DIR [--targets 8192]]

Speed: random weights (speed does not depend on them), greedy decoding, on the CPU. For
each preset it prints tokens/s over `--new-tokens` new tokens from a one-token prompt for
three paths: no cache with the exact window (what nanoGPT's sampler does: the window
recomputed for every token), the cache with the exact window (recomputed past block_size),
the cache with the shift window policy; the shift policy for `--batch` samples at once
(aggregate tokens/s); and ms per token at a full context (the step from block_size - 1 cached tokens
to block_size, against a forward pass over the whole window). Medians of repeats.

Quality (`--run`, a trained model): its val loss when each token is predicted the way a
policy conditions it, past the first window: `exact` sees the block_size tokens before it,
`shift` between half of them and all (each as often). The same `--targets` random val
tokens for both, so the difference is paired.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from tinygpt.checkpoint import load_checkpoint
from tinygpt.config import SampleConfig, preset_names, resolve
from tinygpt.data.corpora import prepare
from tinygpt.generate import Decoder, generate
from tinygpt.models import build_model
from tinygpt.runtime import cpu_description

VOCAB = 65


PATHS = {  # label: (use_cache, window)
    "no cache (nanoGPT's way)": (False, "exact"),
    "cache, exact window": (True, "exact"),
    "cache, shift window": (True, "shift"),
}


def tokens_per_s(
    model: torch.nn.Module, block: int, new: int, use_cache: bool, window: str, batch: int = 1
) -> float:
    """Generated tokens per second, all samples of the batch together."""
    sampling = SampleConfig(
        max_new_tokens=new, temperature=0, use_cache=use_cache, window=window, num_samples=batch
    )
    start = time.perf_counter()
    for _ in generate(model, torch.zeros(batch, 1, dtype=torch.long), block, sampling):
        pass
    return batch * new / (time.perf_counter() - start)


@torch.inference_mode()
def policy_losses(
    model: torch.nn.Module, val: torch.Tensor, block: int, targets: int, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """{policy: (mean val loss, standard error of its difference from exact)} over the same
    random val tokens, each predicted from the context a policy gives it."""
    generator = torch.Generator().manual_seed(seed)
    ends = torch.randint(block, len(val), (targets,), generator=generator)  # tokens to predict
    half = max(block // 2, 1)
    contexts = {
        "exact": torch.full((targets,), block),
        "shift": torch.randint(half, block + 1, (targets,), generator=generator),
    }
    losses = {name: _losses_with_context(model, val, ends, c) for name, c in contexts.items()}
    exact = losses["exact"]
    return {
        name: (loss.mean().item(), ((loss - exact).std() / len(loss) ** 0.5).item())
        for name, loss in losses.items()
    }


def _losses_with_context(
    model: torch.nn.Module, val: torch.Tensor, ends: torch.Tensor, lengths: torch.Tensor
) -> torch.Tensor:
    """Loss of predicting val[end] from the `length` tokens before it, for each pair."""
    losses = torch.empty(len(ends))
    for length in lengths.unique().tolist():
        rows = (lengths == length).nonzero().flatten()
        for chunk in rows.split(64):
            x = torch.stack([val[ends[i] - length : ends[i]] for i in chunk.tolist()])
            logits, _ = model(x)
            losses[chunk] = torch.nn.functional.cross_entropy(
                logits[:, -1].float(), val[ends[chunk]], reduction="none"
            )
    return losses


def print_policy_losses(run_dir: str, targets: int) -> None:
    checkpoint = load_checkpoint(Path(run_dir))
    data = prepare(checkpoint.config.data, checkpoint.tokenizer)
    val = torch.from_numpy(data.val.astype("int64"))
    block = checkpoint.config.model.block_size
    print(
        f"window policies, {run_dir} (step {checkpoint.step}, {checkpoint.model.describe()}), "
        f"{targets:,} random val tokens past the first window:"
    )
    results = policy_losses(checkpoint.model.eval(), val, block, targets)
    exact = results["exact"][0]
    for name, (loss, stderr) in results.items():
        more = "" if name == "exact" else f"; {loss - exact:+.4f} nats (+- {stderr:.4f}) vs exact"
        print(f"  {name:<6} val loss {loss:.4f}{more}")


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
    parser.add_argument("--batch", type=int, default=16, help="samples at once, second table")
    parser.add_argument("--run", help="a trained run: the window policies' val losses")
    parser.add_argument("--targets", type=int, default=8192)
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
        rates = {
            label: statistics.median(
                tokens_per_s(model, block, args.new_tokens, *path) for _ in range(args.repeats)
            )
            for label, path in PATHS.items()
        }
        nanogpt = rates["no cache (nanoGPT's way)"]
        for label, rate in rates.items():
            print(
                f"{preset:<17} {label:<25}: {rate:8,.0f} tokens/s over {args.new_tokens} new, "
                f"{rate / nanogpt:5.1f}x nanoGPT's way"
            )
        batched = tokens_per_s(model, block, args.new_tokens, True, "shift", batch=args.batch)
        print(
            f"{preset:<17} {args.batch} samples at once, cache, shift window: {batched:8,.0f} "
            f"tokens/s in all over {args.new_tokens} new each"
        )
        for use_cache in (True, False):
            full = ms_at_full_context(model, block, use_cache, repeats=max(5, 3 * args.repeats))
            label = "cache   " if use_cache else "no cache"
            print(f"{preset:<17} {label}: {full:7.2f} ms/token at a full {block}-token context")
    if args.run:
        print_policy_losses(args.run, args.targets)


if __name__ == "__main__":
    main()
