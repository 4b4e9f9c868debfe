"""Evaluation: mean loss over fixed batches per split or a whole split; bits per byte."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from tinygpt.batches import batch_at, eval_batches
from tinygpt.runtime import SINGLE_PROCESS, Distributed, all_mean


@torch.no_grad()
def estimate_loss(
    model: nn.Module,
    splits: dict[str, np.ndarray],
    *,
    n_batches: int,
    batch_size: int,
    block_size: int,
    seed: int,
    device: torch.device,
    group: Distributed = SINGLE_PROCESS,
) -> dict[str, float]:
    """{'train_loss': ..., 'val_loss': ...} over the same seeded batches on every call.

    In a torchrun group each rank scores its slice of every batch and the means are averaged
    over the group: the same figure as one process scoring whole batches.
    """
    was_training = model.training
    model.eval()
    losses = {}
    for split, data in splits.items():
        total = 0.0
        batches = eval_batches(
            data, split, n_batches, batch_size, block_size, seed=seed, group=group
        )
        for x, y in batches:
            _, loss = model(x.to(device), y.to(device))
            total += loss.item()
        losses[f"{split}_loss"] = all_mean(total / n_batches, group, device)
    model.train(was_training)
    return losses


def bits_per_token(loss: float) -> float:
    """Cross-entropy in nats -> bits."""
    return loss / math.log(2)


def bits_per_byte(loss: float, tokens_per_byte: float) -> float:
    """A loss per token (nats) as bits per byte of UTF-8 text: the figure that compares
    models whatever their tokenizer (one that packs more bytes into a token has a higher
    loss per token for the same model quality). For ASCII text and a char tokenizer it is
    bits per character."""
    return bits_per_token(loss) * tokens_per_byte


@torch.no_grad()
def split_loss(
    model: nn.Module, data: np.ndarray, block_size: int, batch_size: int, device: torch.device
) -> float:
    """Mean loss over a whole split, every token predicted once (windows side by side).

    Exact where a sampled estimate is noisy: use it to compare runs, not to watch one.
    """
    was_training = model.training
    model.eval()
    n_windows = (len(data) - 1) // block_size
    starts = torch.arange(n_windows) * block_size
    total, count = 0.0, 0
    for i in range(0, n_windows, batch_size):
        x, y = batch_at(data, starts[i : i + batch_size], block_size)
        _, loss = model(x.to(device), y.to(device))
        total += loss.item() * y.numel()
        count += y.numel()
    model.train(was_training)
    return total / count
