"""Run by test_distributed.py, with or without torchrun: a few training steps of a tiny GPT,
then this rank's losses and weights written to OUT_DIR (rank-R.json, rank-R.safetensors)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import safetensors.torch
import torch.distributed as dist

from tinygpt.config import RunConfig
from tinygpt.training.loop import setup, train_step


def main() -> None:
    out_dir, batch_size, steps = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    config = RunConfig.from_dict({
        "model": {"arch": "gpt", "block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 32},
        "optim": {"warmup_steps": 5},
        "train": {"steps": steps, "batch_size": batch_size, "grad_accum_steps": 2},
    })  # fmt: skip
    session = setup(config)
    losses = [train_step(session)[0] for _ in range(steps)]
    rank = session.group.rank
    (out_dir / f"rank-{rank}.json").write_text(json.dumps(losses))
    safetensors.torch.save_model(session.model, str(out_dir / f"rank-{rank}.safetensors"))
    if dist.is_initialized():
        dist.barrier()  # as the command line does: leave together, or gloo may abort one rank
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
