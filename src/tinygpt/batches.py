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

EVAL_SEED_OFFSET = {"train": 1, "val": 2}  # eval streams differ from the training stream


def check_length(data: np.ndarray, block_size: int, split: str) -> None:
    """A split must hold at least one window plus its target."""
    if len(data) < block_size + 1:
        raise UserError(
            f"the {split} split has {len(data)} tokens, fewer than block_size + 1 = "
            f"{block_size + 1}; use a longer corpus or a smaller --model.block_size"
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
    data: np.ndarray, batch_size: int, block_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of random windows, as the lecture's get_batch (same draws for the same seed)."""
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    return batch_at(data, starts, block_size)


def eval_batches(
    data: np.ndarray, split: str, n_batches: int, batch_size: int, block_size: int, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The same `n_batches` batches every time it is called with the same arguments."""
    generator = torch.Generator().manual_seed(seed + EVAL_SEED_OFFSET[split])
    for _ in range(n_batches):
        yield random_batch(data, batch_size, block_size, generator)
