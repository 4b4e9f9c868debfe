"""Run by test_distributed.py, with or without torchrun: `ddp_worker.py OUT_DIR CONFIG_JSON`
trains the config's steps and writes this rank's losses and weights to OUT_DIR (rank-R.json,
rank-R.safetensors)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import safetensors.torch
import torch.distributed as dist

from tinygpt.config import RunConfig
from tinygpt.training.loop import setup, train_step


def main() -> None:
    out_dir, config_file = Path(sys.argv[1]), Path(sys.argv[2])
    config = RunConfig.from_dict(json.loads(config_file.read_text(encoding="utf-8")))
    session = setup(config)
    losses = [train_step(session).loss for _ in range(config.train.steps)]
    rank = session.group.rank
    (out_dir / f"rank-{rank}.json").write_text(json.dumps(losses))
    safetensors.torch.save_model(session.model, str(out_dir / f"rank-{rank}.safetensors"))
    if dist.is_initialized():
        dist.barrier()  # as the command line does: leave together, or gloo may abort one rank
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
