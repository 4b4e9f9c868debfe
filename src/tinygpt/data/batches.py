"""Batches: random `block_size` windows of token ids with their next-token targets.

Training draws windows from a seeded `torch.Generator`, so a seed fixes the whole stream.
Evaluation draws from a fresh generator with a fixed seed each time, so successive
evaluations see the very same batches and their losses can be compared.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from tinygpt.errors import UserError
from tinygpt.runtime import SINGLE_PROCESS, Distributed

EVAL_SEED_OFFSET = {"train": 1, "val": 2}  # eval streams differ from the training stream


def check_length(
    data: np.ndarray, block_size: int, split: str, option: str = "--model.block_size"
) -> None:
    """A split must hold at least one window plus its target (`option` sets block_size)."""
    if len(data) < block_size + 1:
        raise UserError(
            f"the {split} split has {len(data)} tokens, fewer than block_size + 1 = "
            f"{block_size + 1}; use a longer corpus or a smaller {option}"
        )


def batch_at(
    data: np.ndarray, starts: torch.Tensor, block_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs data[s : s+T] and targets data[s+1 : s+T+1] for each start s."""
    offsets = starts.numpy()[:, None] + np.arange(block_size)  # (B, T)
    x = torch.from_numpy(data[offsets].astype(np.int64))  # (B, T)
    y = torch.from_numpy(data[offsets + 1].astype(np.int64))  # (B, T)
    return x, y


def random_batch(
    data: np.ndarray,
    batch_size: int,
    block_size: int,
    generator: torch.Generator,
    *,
    group: Distributed = SINGLE_PROCESS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of random windows, as the lecture's get_batch (same draws for the same seed).

    In a torchrun group every rank draws the same global batch of batch_size * world_size
    windows and keeps its own slice, so the global batch is the same whatever the group
    size, and one generator state describes every rank's stream.
    """
    n_windows = len(data) - block_size
    starts = torch.randint(n_windows, (batch_size * group.world_size,), generator=generator)
    mine = starts[group.rank * batch_size : (group.rank + 1) * batch_size]
    return batch_at(data, mine, block_size)


def eval_batches(
    data: np.ndarray,
    split: str,
    n_batches: int,
    batch_size: int,
    block_size: int,
    *,
    seed: int,
    group: Distributed = SINGLE_PROCESS,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The same `n_batches` batches every time it is called with the same arguments."""
    generator = torch.Generator().manual_seed(seed + EVAL_SEED_OFFSET[split])
    for _ in range(n_batches):
        yield random_batch(data, batch_size, block_size, generator, group=group)
