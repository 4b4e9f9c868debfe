"""Optimizers and learning-rate schedules.

AdamW decays matrices only. With `optim.optimizer = "muon"`, the hidden matrices of the
blocks are trained by Muon (orthogonalised momentum) and everything else by AdamW, as the
speedruns do. Each schedule is a pure function of the step, so a resumed run gets the very
same learning rates as an uninterrupted one.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from tinygpt.config import OptimConfig


def parameter_groups(params: list[nn.Parameter], weight_decay: float) -> list[dict]:
    """Decay the matrices (embeddings, linear weights); leave biases and norm gains alone."""
    params = [p for p in params if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The 2-D weights inside the blocks: what Muon trains (not embeddings, not the head)."""
    named = model.named_parameters()
    return [p for name, p in named if name.startswith("blocks.") and p.dim() == 2]


class OptimizerPair:
    """Muon for the hidden matrices and AdamW for the rest, stepped as one optimizer."""

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer) -> None:
        self.optimizers = (muon, adamw)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [group for opt in self.optimizers for group in opt.param_groups]

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.optimizers[0].state_dict(), "adamw": self.optimizers[1].state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizers[0].load_state_dict(state["muon"])
        self.optimizers[1].load_state_dict(state["adamw"])


def make_optimizer(
    model: nn.Module, config: OptimConfig, device: torch.device
) -> torch.optim.Optimizer | OptimizerPair:
    """The configured optimizer; each param group's `base_lr` is what the schedule scales."""
    fused = device.type == "cuda"  # one kernel for all parameters; CUDA only
    params = list(model.parameters())
    if config.optimizer == "muon":
        muon_params = {id(p) for p in hidden_matrices(model)}
        params = [p for p in params if id(p) not in muon_params]
    groups = parameter_groups(params, config.weight_decay)
    adamw = torch.optim.AdamW(
        groups, lr=config.lr, betas=(config.beta1, config.beta2), fused=fused or None
    )
    for group in adamw.param_groups:
        group["base_lr"] = config.lr
    if config.optimizer == "adamw":
        return adamw
    muon = torch.optim.Muon(
        hidden_matrices(model),
        lr=config.muon_lr,
        weight_decay=config.weight_decay,
        momentum=config.muon_momentum,
        ns_steps=config.muon_ns_steps,
        adjust_lr_fn="match_rms_adamw" if config.muon_match_adamw else None,
    )
    for group in muon.param_groups:
        group["base_lr"] = config.muon_lr
    return OptimizerPair(muon, adamw)


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
