"""Each step of the lecture as a preset: its final val loss beside the lecture's figure.

    python benchmarks/lecture_steps.py [--presets lecture-head ...] [--seeds 3]

Trains every step preset from scratch on tiny shakespeare with seeds 1337, 1338, ... and
prints, per preset, the final val loss (the lecture's own estimate: the mean over 200
batches at the last step) as mean, standard deviation and range over the seeds, next to
the val loss the lecture reports for that step, and the training time.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

from tinygpt.config import resolve
from tinygpt.models import build_model, count_parameters
from tinygpt.runtime import cpu_description
from tinygpt.training.runs import train

STEP_PRESETS = [
    "lecture-bigram",
    "lecture-head",
    "lecture-multihead",
    "lecture-ffwd",
    "lecture-residual",
    "lecture-layernorm",
    "lecture-notebook",
]  # the lecture's figure for each is its train.reference_val_loss


def final_val_loss(preset: str, seed: int) -> tuple[float, float]:
    """(val loss at the last step, seconds) of one run of a preset."""
    config = resolve(preset, overrides={"train": {"seed": seed, "sample_tokens": 0}})
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        final = train(config, Path(tmp) / "run", out=io.StringIO())
        return final["val_loss"], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=STEP_PRESETS)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    print(f"cpu: {cpu_description()}")
    for preset in args.presets:
        config = resolve(preset)
        n_params = count_parameters(build_model(config.model, 65))
        runs = [final_val_loss(preset, 1337 + i) for i in range(args.seeds)]
        losses = [loss for loss, _ in runs]
        spread = statistics.stdev(losses) if len(losses) > 1 else 0.0
        mean, reported = statistics.mean(losses), config.train.reference_val_loss
        seconds = statistics.median(t for _, t in runs)
        print(
            f"{preset:<18} {n_params / 1e6:.6f}M params, {config.train.steps} steps: val "
            f"{mean:.4f} (sd {spread:.4f}, {min(losses):.4f}-{max(losses):.4f}), the lecture "
            f"{reported:.4f}, difference {mean - reported:+.4f}; {seconds:.0f} s a run",
            flush=True,
        )


if __name__ == "__main__":
    main()
