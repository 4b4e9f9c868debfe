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
from tinygpt.models import LanguageModel
from tinygpt.runtime import reduced_precision


def parameter_groups(params: list[nn.Parameter], weight_decay: float) -> list[dict]:
    """Decay the matrices (embeddings, linear weights); leave biases and norm gains alone."""
    params = [p for p in params if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


GRAM_FROM = 2  # long side / short side from which the Gram iteration takes fewer products


def orthogonalise(
    updates: torch.Tensor,
    *,
    coefficients: tuple[float, float, float],
    steps: int,
    eps: float,
    dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """Newton-Schulz iterations from a stack of matrices towards semi-orthogonal ones.

    (n, rows, cols) -> (n, rows, cols) in `dtype`; the same iteration as torch's Muon, one
    batched product per stage for the whole stack instead of one product per matrix. In
    float32, matrices at least twice as long as they are wide take the same iterates by way
    of their Gram matrices (`newton_schulz_on_gram`), which costs fewer products.
    """
    x = updates.to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT  # iterate on the short side: (n, short, long)
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norm <= 1
    # bfloat16's 8 bits would compound in the Gram matrix's own iteration: there the plain
    # one, where its products are the fast ones anyway
    if dtype == torch.float32 and x.size(-1) >= GRAM_FROM * x.size(-2):
        x = newton_schulz_on_gram(x, coefficients=coefficients, steps=steps)
    else:
        a, b, c = coefficients
        for _ in range(steps):
            gram = x @ x.mT  # (n, short, short)
            poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b G + c G^2
            x = torch.baddbmm(x, poly, x, beta=a)  # a X + (b G + c G^2) X
    return x.mT if tall else x


def newton_schulz_on_gram(
    x: torch.Tensor, *, coefficients: tuple[float, float, float], steps: int
) -> torch.Tensor:
    """`steps` Newton-Schulz iterations of a wide stack x (n, short, long), computed on its
    (short, short) Gram matrices.

    Each iteration multiplies X by a polynomial of its Gram matrix G = X X^T,
    P = a I + b G + c G^2, so every iterate is X_k = Q_k X_0 with Q_{k+1} = P_k Q_k, and
    G_{k+1} = P_k G_k P_k (P_k is a polynomial of G_k: they commute). Only the first Gram
    matrix and the last product touch the long side. Counted in (short, short) products,
    five iterations take about 17 + 2 long/short against 5 (1 + 2 long/short) the plain
    way: 44% fewer for a 4:1 matrix (an MLP's).
    """
    a, b, c = coefficients
    gram = x @ x.mT  # (n, short, short)
    product: torch.Tensor | None = None  # Q_k
    for step in range(steps):
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b G + c G^2
        poly.diagonal(dim1=-2, dim2=-1).add_(a)  # + a I
        product = poly if product is None else poly @ product
        if step < steps - 1:  # the last iteration's Gram matrix is never used
            gram = poly @ gram @ poly
    return x if product is None else product @ x  # (n, short, long)


class BatchedMuon(torch.optim.Muon):
    """torch's Muon, orthogonalising all matrices of one shape together.

    The update is torch's: Nesterov momentum, Newton-Schulz in bfloat16, the learning rate
    scaled by sqrt(max(1, rows / cols)), decoupled weight decay. The small matrices of a
    CPU model make the per-matrix products slow; stacked, they take about half the time.
    `ns_dtype` float32 runs the iterations in float32 instead, for CPUs where bfloat16
    products are 10-100x slower than float32 ones (the result agrees to bfloat16 rounding);
    there the oblong matrices iterate on their Gram matrices (`orthogonalise`).
    """

    def __init__(self, params: Any, ns_dtype: torch.dtype = torch.bfloat16, **kwargs: Any):
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]  # torch declares it with overloads; the same closure
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
                    stack,
                    coefficients=group["ns_coefficients"],
                    steps=group["ns_steps"],
                    eps=group["eps"],
                    dtype=self.ns_dtype,
                )
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
    model: LanguageModel, config: OptimConfig, device: torch.device
) -> torch.optim.Optimizer | OptimizerPair:
    """The configured optimizer: AdamW at `lr`, or Muon at `muon_lr` for the matrices inside
    the blocks (the model lists them: `hidden_matrices()`) and AdamW for the rest."""
    fused = device.type in ("cuda", "cpu")  # one kernel for all parameters (4x on a CPU)
    params = list(model.parameters())
    if config.optimizer == "muon":
        muon_params = {id(p) for p in model.hidden_matrices()}
        params = [p for p in params if id(p) not in muon_params]
    groups = parameter_groups(params, config.weight_decay)
    adamw = torch.optim.AdamW(
        groups, lr=config.lr, betas=(config.beta1, config.beta2), fused=fused or None
    )
    if config.optimizer == "adamw":
        return adamw
    muon = BatchedMuon(
        model.hidden_matrices(),
        lr=config.muon_lr,
        weight_decay=config.weight_decay,
        momentum=config.muon_momentum,
        ns_steps=config.muon_ns_steps,
        ns_dtype=reduced_precision(device),  # float32 on CPUs without native bfloat16
    )
    return OptimizerPair(muon, adamw)


def lr_scale_at(step: int, config: OptimConfig, total_steps: int) -> float:
    """The learning rate of optimizer step `step` (0-based) of `total_steps`, as a fraction of
    the peak in [0, 1]: each param group's own peak rate is multiplied by it."""
    floor = config.min_lr / config.lr
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "cosine":
        span = max(1, total_steps - config.warmup_steps)
        progress = min(1.0, (step - config.warmup_steps) / span)
        return floor + 0.5 * (1 + math.cos(math.pi * progress)) * (1 - floor)
    # wsd: warmup, a long stable stretch at the peak, then a linear decay to the floor
    decay_steps = max(1, round(config.decay_fraction * total_steps))
    decay_start = total_steps - decay_steps
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start) / decay_steps)
    return 1.0 + progress * (floor - 1.0)


def length_matters_from(config: OptimConfig, total_steps: int) -> int:
    """The first step whose learning rate depends on the run's length (`total_steps`):
    where a wsd schedule's decay starts, where a cosine one's warmup ends, at the latest
    the end; a constant rate never depends on it."""
    if config.schedule == "constant":
        return total_steps
    if config.schedule == "cosine":
        return min(total_steps, config.warmup_steps)
    decay_steps = max(1, round(config.decay_fraction * total_steps))
    return min(total_steps, max(config.warmup_steps, total_steps - decay_steps))


class LrSchedule:
    """Sets each param group's learning rate to its peak (the rate it was created with)
    times `lr_scale_at(step)`: Muon's groups and AdamW's follow one schedule at their own
    heights. A pure function of the step and the run's length, so a resumed run gets the
    same rates.

    A run that changes its length as it goes (a time limit, budget.py) calls
    `change_length`. Where the rates so far do not depend on the length (a wsd schedule
    before its decay, any schedule in its warmup) the new length simply takes over; past
    that point the rate goes on from where it is, in a straight line down to the floor at
    the new end (`bend`), so it never jumps.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer | OptimizerPair, config: OptimConfig, total: int
    ) -> None:
        self.optimizer, self.config, self.total_steps = optimizer, config, total
        self.peaks = [group["lr"] for group in optimizer.param_groups]
        self.bend: tuple[int, float] | None = None  # (step, scale) where the straight line starts

    def scale_at(self, step: int) -> float:
        if self.bend is None or step < self.bend[0]:
            return lr_scale_at(step, self.config, self.total_steps)
        start, scale = self.bend
        floor = self.config.min_lr / self.config.lr
        progress = min(1.0, (step - start) / max(1, self.total_steps - start))
        return scale + progress * (floor - scale)

    def set_for(self, step: int) -> float:
        """Set the rates for optimizer step `step`; return the scale."""
        scale = self.scale_at(step)
        # loading a state dict replaces the group dicts: ask for them each time
        for group, peak in zip(self.optimizer.param_groups, self.peaks, strict=True):
            group["lr"] = peak * scale
        return scale

    def change_length(self, total: int, step: int) -> None:
        """Make the run `total` steps long, from optimizer step `step` (0-based) on."""
        if total == self.total_steps:
            return
        untouched = min(
            length_matters_from(self.config, self.total_steps),
            length_matters_from(self.config, total),
        )
        if self.bend is not None or step > untouched:
            self.bend = (step, self.scale_at(step))
        self.total_steps = total

    def state_dict(self) -> dict[str, Any]:
        return {"total_steps": self.total_steps, "bend": list(self.bend) if self.bend else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total_steps = int(state["total_steps"])
        bend = state["bend"]
        self.bend = (int(bend[0]), float(bend[1])) if bend is not None else None
