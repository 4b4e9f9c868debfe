"""Evaluation: mean loss over fixed batches per split, and bits per token."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from tinygpt.batches import eval_batches


@torch.no_grad()
def estimate_loss(
    model: nn.Module,
    splits: dict[str, np.ndarray],
    n_batches: int,
    batch_size: int,
    block_size: int,
    seed: int,
    device: torch.device,
) -> dict[str, float]:
    """{'train_loss': ..., 'val_loss': ...} over the same seeded batches on every call."""
    was_training = model.training
    model.eval()
    losses = {}
    for split, data in splits.items():
        total = 0.0
        for x, y in eval_batches(data, split, n_batches, batch_size, block_size, seed):
            _, loss = model(x.to(device), y.to(device))
            total += loss.item()
        losses[f"{split}_loss"] = total / n_batches
    model.train(was_training)
    return losses


def bits_per_token(loss: float) -> float:
    """Cross-entropy in nats -> bits; for a char tokenizer, bits per character."""
    return loss / math.log(2)
