"""Training tokens/s with 1 process and with N processes (torchrun, DDP) on this machine.

    python benchmarks/distributed_throughput.py [--preset cpu-baby] [--nproc 2] [--steps 100]

Both runs train the same global batch: N processes take batch_size / N sequences each. The
figure is the median of the tokens/s that the runs log (global tokens, evaluation left out).
On a machine with fewer cores than processes expect no speed-up: this shows the cost of the
machinery, and the correctness lives in tests/test_distributed.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tinygpt.config import preset_names, resolve
from tinygpt.rundir import RunDir


def tokens_per_s(preset: str, nproc: int, steps: int, run_dir: Path) -> float:
    batch = resolve(preset).train.batch_size // nproc
    command = [
        sys.executable, "-m", "tinygpt", "train", "--preset", preset, "--steps", str(steps),
        "--train.batch_size", str(batch), "--train.eval_interval", str(steps),
        "--train.eval_batches", "1", "--train.log_interval", "10", "--train.sample_tokens", "0",
        "--out", str(run_dir), "--nproc", str(nproc),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    lines = [json.loads(line) for line in RunDir(run_dir).metrics.open()]
    return statistics.median(line["tokens_per_s"] for line in lines if "tokens_per_s" in line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu-baby", choices=preset_names())
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    print(f"{args.preset}, {args.steps} steps, {os.cpu_count()} CPU cores")
    with tempfile.TemporaryDirectory() as tmp:
        for nproc in (1, args.nproc):
            rate = tokens_per_s(args.preset, nproc, args.steps, Path(tmp) / f"n{nproc}")
            print(f"{nproc} process{'es' if nproc > 1 else ''}: {rate:,.0f} tokens/s")


if __name__ == "__main__":
    main()
