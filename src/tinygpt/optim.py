"""Optimizers and learning-rate schedules.

AdamW decays matrices only. Each schedule is a pure function of the step, so a resumed run
gets the very same learning rates as an uninterrupted one.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tinygpt.config import OptimConfig


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay the matrices (embeddings, linear weights); leave biases and norm gains alone."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def make_optimizer(
    model: nn.Module, config: OptimConfig, device: torch.device
) -> torch.optim.Optimizer:
    groups = parameter_groups(model, config.weight_decay)
    fused = device.type == "cuda"  # one kernel for all parameters; CUDA only
    return torch.optim.AdamW(
        groups, lr=config.lr, betas=(config.beta1, config.beta2), fused=fused or None
    )


def lr_at(step: int, config: OptimConfig, total_steps: int) -> float:
    """The learning rate for optimizer step `step` (0-based) of `total_steps`."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return config.lr
    if config.schedule == "cosine":
        span = max(1, total_steps - config.warmup_steps)
        progress = min(1.0, (step - config.warmup_steps) / span)
        return config.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (
            config.lr - config.min_lr
        )
    # wsd: warmup, a long stable stretch at lr, then a linear decay to min_lr
    decay_steps = max(1, round(config.decay_fraction * total_steps))
    decay_start = total_steps - decay_steps
    if step < decay_start:
        return config.lr
    progress = min(1.0, (step - decay_start) / decay_steps)
    return config.lr + progress * (config.min_lr - config.lr)
