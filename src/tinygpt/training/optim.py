"""Optimizers and learning-rate schedules.

AdamW decays matrices only. With `optim.optimizer = "muon"`, the hidden matrices of the
blocks are trained by Muon (orthogonalised momentum) and everything else by AdamW, as the
speedruns do. Each schedule is a pure function of the step, so a resumed run gets the very
same learning rates as an uninterrupted one.

Both optimizers compute torch's updates (AdamW by torch's own function) but are not
torch.optim.Optimizer subclasses: `EagerOptimizer` says why.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.optim.adam import adam

from tinygpt.config import OptimConfig
from tinygpt.models import LanguageModel
from tinygpt.runtime import newton_schulz_dtype


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


class EagerOptimizer:
    """What the engine asks of an optimizer: `param_groups` (each group's settings with its
    parameters; LrSchedule sets every group's "lr"), per-parameter `state`, `zero_grad`, and
    a state dict laid out as torch.optim's (parameters numbered in group order), so a
    checkpoint's optimizer state loads whichever of the two wrote it.

    Not a torch.optim.Optimizer: its constructor, step and state dict import torch._dynamo
    on first use (1.4 s of the default run's 10 s on a 2-core CPU), to keep the compiler
    out of them; these are never compiled.
    """

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        groups = list(params)
        if groups and not isinstance(groups[0], dict):  # one group: a list of parameters
            groups = [{"params": groups}]
        self.defaults = defaults
        self.param_groups = [{**defaults, **g, "params": list(g["params"])} for g in groups]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    def parameters(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def step(self) -> None:
        """Update every parameter that has a gradient."""
        raise NotImplementedError

    def zero_grad(self, set_to_none: bool = True) -> None:
        for param in self.parameters():
            if set_to_none:
                param.grad = None
            elif param.grad is not None:
                param.grad.detach_().zero_()

    def state_dict(self) -> dict[str, Any]:
        number = {id(p): i for i, p in enumerate(self.parameters())}
        groups = [
            {**group, "params": [number[id(p)] for p in group["params"]]}
            for group in self.param_groups
        ]
        return {"state": {number[id(p)]: s for p, s in self.state.items()}, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved, values = state_dict["param_groups"], state_dict["state"]
        if [len(g["params"]) for g in saved] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError("the saved optimizer state has other parameter groups")
        self.state = {}
        for saved_group, group in zip(saved, self.param_groups, strict=True):
            group.update({k: v for k, v in saved_group.items() if k != "params"})
            for number, param in zip(saved_group["params"], group["params"], strict=True):
                if number in values:
                    self.state[param] = {
                        key: _placed(key, value, param, fused=bool(group.get("fused")))
                        for key, value in values[number].items()
                    }


def _placed(key: str, value: torch.Tensor, param: torch.Tensor, *, fused: bool) -> torch.Tensor:
    """A saved state tensor where torch's optimizers put it, so a state saved on one device
    loads on another: a step count in float32 (on the parameter's device for a fused
    kernel), the rest on the parameter's device in its dtype."""
    if key == "step":
        return value.to(device=param.device if fused else "cpu", dtype=torch.float32)
    return value.to(device=param.device, dtype=param.dtype)


class AdamW(EagerOptimizer):
    """torch's AdamW: torch's own update (`torch.optim.adam.adam` with decoupled weight
    decay), `fused` into one kernel for all parameters (4x on a CPU), or one per tensor."""

    def __init__(
        self,
        params: Iterable[Any],
        *,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        fused: bool = False,
    ) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, {**defaults, "fused": fused})

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            states = [self._state_of(p, fused=bool(group["fused"])) for p in params]
            beta1, beta2 = group["betas"]
            adam(
                params,
                [p.grad for p in params],
                [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states],
                [],  # no amsgrad
                [s["step"] for s in states],
                fused=bool(group["fused"]), foreach=False, capturable=False,
                differentiable=False, grad_scale=None, found_inf=None, has_complex=False,
                amsgrad=False, maximize=False, decoupled_weight_decay=True,
                beta1=beta1, beta2=beta2, lr=group["lr"],
                weight_decay=group["weight_decay"], eps=group["eps"],
            )  # fmt: skip

    def _state_of(self, param: torch.Tensor, *, fused: bool) -> dict[str, torch.Tensor]:
        if param not in self.state:  # as torch's AdamW starts it
            step_device = param.device if fused else None
            self.state[param] = {
                "step": torch.zeros((), dtype=torch.float32, device=step_device),
                "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format),
            }
        return self.state[param]


MUON_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # torch's Muon's Newton-Schulz quintic


class BatchedMuon(EagerOptimizer):
    """torch's Muon (torch.optim.Muon), orthogonalising all matrices of one shape together.

    The update is torch's: Nesterov momentum, Newton-Schulz in bfloat16, the learning rate
    scaled by sqrt(max(1, rows / cols)), decoupled weight decay. The small matrices of a
    CPU model make the per-matrix products slow; stacked, they take about half the time.
    `ns_dtype` float32 runs the iterations in float32 instead, for CPUs where bfloat16
    products are 10-100x slower than float32 ones (the result agrees to bfloat16 rounding);
    there the oblong matrices iterate on their Gram matrices (`orthogonalise`).
    """

    def __init__(
        self,
        params: Iterable[Any],
        *,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        ns_steps: int = 5,
        ns_dtype: torch.dtype = torch.bfloat16,
    ) -> None:
        defaults = {
            "lr": lr,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "nesterov": True,
            "ns_coefficients": MUON_COEFFICIENTS,
            "eps": 1e-7,
            "ns_steps": ns_steps,
            "adjust_lr_fn": None,  # torch's default: its "original" scaling, as here
        }
        super().__init__(params, defaults)
        if any(p.dim() != 2 for p in self.parameters()):
            raise ValueError("Muon orthogonalises matrices: every parameter must be 2-D")
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            by_shape: dict[torch.Size, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state.setdefault(param, {})
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


class OptimizerPair:
    """Muon for the hidden matrices and AdamW for the rest, stepped as one optimizer."""

    def __init__(self, muon: BatchedMuon, adamw: AdamW) -> None:
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
) -> AdamW | OptimizerPair:
    """The configured optimizer: AdamW at `lr`, or Muon at `muon_lr` for the matrices inside
    the blocks (the model lists them: `hidden_matrices()`) and AdamW for the rest."""
    fused = device.type in ("cuda", "cpu")  # one kernel for all parameters (4x on a CPU)
    params = list(model.parameters())
    if config.optimizer == "muon":
        muon_params = {id(p) for p in model.hidden_matrices()}
        params = [p for p in params if id(p) not in muon_params]
    groups = parameter_groups(params, config.weight_decay)
    adamw = AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), fused=fused)
    if config.optimizer == "adamw":
        return adamw
    muon = BatchedMuon(
        model.hidden_matrices(),
        lr=config.muon_lr,
        weight_decay=config.weight_decay,
        momentum=config.muon_momentum,
        ns_steps=config.muon_ns_steps,
        ns_dtype=newton_schulz_dtype(config.muon_ns_dtype, device),
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
        self, optimizer: EagerOptimizer | OptimizerPair, config: OptimConfig, total: int
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
