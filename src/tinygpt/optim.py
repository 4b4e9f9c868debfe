"""Optimizers and learning-rate schedules.

AdamW decays matrices only. With `optim.optimizer = "muon"`, the hidden matrices of the
blocks are trained by Muon (orthogonalised momentum) and everything else by AdamW, as the
speedruns do. Each schedule is a pure function of the step, so a resumed run gets the very
same learning rates as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from tinygpt.config import OptimConfig
from tinygpt.runtime import reduced_precision


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


def orthogonalise(
    updates: torch.Tensor,
    coefficients: tuple[float, float, float],
    steps: int,
    eps: float,
    dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """Newton-Schulz iterations from a stack of matrices towards semi-orthogonal ones.

    (n, rows, cols) -> (n, rows, cols) in `dtype`; the same iteration as torch's Muon, one
    batched product per stage for the whole stack instead of one product per matrix.
    """
    a, b, c = coefficients
    x = updates.to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT  # iterate on the short side: (n, short, long)
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norm <= 1
    for _ in range(steps):
        gram = x @ x.mT  # (n, short, short)
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b G + c G^2
        x = torch.baddbmm(x, poly, x, beta=a)  # a X + (b G + c G^2) X
    return x.mT if tall else x


class BatchedMuon(torch.optim.Muon):
    """torch's Muon, orthogonalising all matrices of one shape together.

    The update is torch's: Nesterov momentum, Newton-Schulz in bfloat16, the learning rate
    scaled by sqrt(max(1, rows / cols)), decoupled weight decay. The small matrices of a
    CPU model make the per-matrix products slow; stacked, they take about half the time.
    `ns_dtype` float32 runs the iterations in float32 instead, for CPUs where bfloat16
    products are 10-100x slower than float32 ones (the result agrees to bfloat16 rounding).
    """

    def __init__(self, params: Any, ns_dtype: torch.dtype = torch.bfloat16, **kwargs: Any):
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            by_shape: dict[torch.Size, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(param.grad)
                buffer = state["momentum_buffer"]
                buffer.lerp_(param.grad, 1 - group["momentum"])
                update = param.grad.lerp(buffer, group["momentum"]) if group["nesterov"] else buffer
                by_shape[param.shape].append((param, update))
            for shape, pairs in by_shape.items():
                stack = torch.stack([update for _, update in pairs])
                ortho = orthogonalise(
                    stack, group["ns_coefficients"], group["ns_steps"], group["eps"],
                    self.ns_dtype,
                )  # fmt: skip
                lr = group["lr"] * math.sqrt(max(1.0, shape[0] / shape[1]))
                for (param, _), step in zip(pairs, ortho, strict=True):
                    param.mul_(1 - group["lr"] * group["weight_decay"])
                    param.add_(step, alpha=-lr)
        return loss


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
    fused = device.type in ("cuda", "cpu")  # one kernel for all parameters (4x on a CPU)
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
    muon = BatchedMuon(
        hidden_matrices(model),
        lr=config.muon_lr,
        weight_decay=config.weight_decay,
        momentum=config.muon_momentum,
        ns_steps=config.muon_ns_steps,
        ns_dtype=reduced_precision(device),  # float32 on CPUs without native bfloat16
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
