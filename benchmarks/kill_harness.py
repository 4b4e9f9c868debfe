"""Kill a training run with SIGKILL at random instants, resume it each time, compare.

    python benchmarks/kill_harness.py [--kills 20] [--steps 600] [--every 5] [--seed 0]

Trains the `cpu-baby` shapes, shortened (`--steps`, a checkpoint every `--every` steps),
once without interruption and once under fire: `tinygpt train` is started and, once it has
begun training (a new line in metrics.jsonl), killed with SIGKILL after a random delay, in
the middle of steps, evaluations or saves alike. Every checkpoint left is then loaded
(weights, metadata and training state), and the run is resumed with `tinygpt train
--resume`, until `--kills` kills are done; then it runs to the end. Prints the kills, how
many struck while a save was under way, resumes, corrupt checkpoints, and tensors whose
final weights differ from the uninterrupted run (on a CPU they must be identical).
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import safetensors.torch
import torch

from tinygpt.checkpoint import load_checkpoint, load_train_state
from tinygpt.errors import UserError
from tinygpt.rundir import RunDir, list_checkpoints


def train_command(run_dir: Path, steps: int, data: str, every: int) -> list[str]:
    return [
        sys.executable, "-m", "tinygpt", "train", "--preset", "cpu-baby", "--data", data,
        "--steps", str(steps), "--train.eval_interval", str(every), "--train.eval_batches", "2",
        "--optim.warmup_steps", "10", "--train.sample_tokens", "0", "--out", str(run_dir),
    ]  # fmt: skip


def resume_command(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "tinygpt", "train", "--resume", str(run_dir)]


def count_corrupt(run_dir: Path) -> int:
    """Checkpoints that fail to load (a complete checkpoint must always load)."""
    corrupt = 0
    best = RunDir(run_dir).best
    for folder in [*list_checkpoints(run_dir), *([best] if best.exists() else [])]:
        try:
            load_checkpoint(folder)
            if folder != best:
                load_train_state(folder)
        except (UserError, OSError, RuntimeError, ValueError):
            corrupt += 1
    return corrupt


def save_under_way(run_dir: Path) -> bool:
    parent = RunDir(run_dir).checkpoints
    return parent.is_dir() and any(p.name.startswith((".tmp-", ".old-")) for p in parent.iterdir())


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(list_checkpoints(run_dir)[-1] / "model.safetensors")


def wait_until_training(process: subprocess.Popen, metrics: Path) -> None:
    """Start-up (imports, data) takes seconds: wait for a new metrics line, so that the kill
    lands in training steps, evaluations or saves."""
    size = metrics.stat().st_size if metrics.exists() else 0
    while process.poll() is None and (metrics.stat().st_size if metrics.exists() else 0) <= size:
        time.sleep(0.01)


def run_harness(
    kills: int,
    steps: int,
    seed: int,
    data: str,
    workdir: Path,
    delays: tuple[float, float],
    every: int = 5,
) -> dict[str, int]:
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    subprocess.run(train_command(workdir / "whole", steps, data, every), check=True, **quiet)
    run_dir, rng = workdir / "killed", random.Random(seed)
    counts = {"kills": 0, "kills_during_save": 0, "resumes": 0, "corrupt": 0}
    command = train_command(run_dir, steps, data, every)
    stderr_path = workdir / "stderr.txt"
    while True:
        with stderr_path.open("w") as stderr:
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        if counts["kills"] < kills:
            wait_until_training(process, RunDir(run_dir).metrics)
            try:
                process.wait(timeout=rng.uniform(*delays))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                counts["kills"] += 1
                counts["kills_during_save"] += save_under_way(run_dir)
                counts["corrupt"] += count_corrupt(run_dir)
        else:
            process.wait()
        if process.returncode == 0 or "already finished" in stderr_path.read_text():
            break  # done (a kill may land after the last checkpoint, before the exit)
        if process.returncode != -9:
            raise RuntimeError(f"training failed: {stderr_path.read_text()[-2000:]}")
        command = resume_command(run_dir) if RunDir(run_dir).exists() else command
        counts["resumes"] += 1
    whole, killed = final_weights(workdir / "whole"), final_weights(run_dir)
    counts["mismatches"] = sum(not torch.equal(whole[k], killed[k]) for k in whole)
    counts["mismatches"] += len(set(whole) ^ set(killed))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0, help="seed for the kill delays")
    parser.add_argument("--data", default="tinyshakespeare")
    parser.add_argument("--every", type=int, default=5, help="steps between checkpoints")
    parser.add_argument("--min-delay", type=float, default=0.0, help="seconds after start-up")
    parser.add_argument("--max-delay", type=float, default=2.0, help="seconds after start-up")
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        delays = (args.min_delay, args.max_delay)
        counts = run_harness(
            args.kills, args.steps, args.seed, args.data, Path(tmp), delays, args.every
        )
    print(
        f"kills {counts['kills']} ({counts['kills_during_save']} while a save was under way), "
        f"resumes {counts['resumes']}, corrupt checkpoints {counts['corrupt']}, "
        f"weight mismatches {counts['mismatches']} ({time.perf_counter() - start:.0f} s)"
    )


if __name__ == "__main__":
    main()
