"""The GPT's building blocks that are not its story: norms, rotary positions, and a Linear
with a faster matrix-vector product on CPUs, which the decoder swaps in (with_fast_matvec)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from tinygpt.config import ModelConfig

ModuleT = TypeVar("ModuleT", bound=nn.Module)


class FastMatvecLinear(nn.Linear):
    """nn.Linear with a faster CPU product for one row of input (decoding a single token),
    where this CPU has one.

    MKL's float32 matrix-vector product reads a large weight matrix far below memory speed
    on some CPUs (about 10 GB/s on an AMD EPYC). Seen as a (2 * out, in / 2) matrix, each
    row split in halves, the weight times two columns (the two halves of x) is a matrix
    product over the same bytes that runs 2-3x faster there; y is the sum of its diagonal
    pairs. On other CPUs (an Intel Xeon with AVX-512) the plain product is the faster one,
    by 4x. So which product a shape gets is timed once per process (`two_columns_pay`);
    both agree to float rounding.
    """

    MIN_WEIGHTS = 3 << 16  # below ~768 KB the weights stay in cache and the plain product wins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._one_row_on_cpu(x) and two_columns_pay(self.out_features, self.in_features):
            return two_column_product(x, self.weight, self.bias)
        return super().forward(x)

    def _one_row_on_cpu(self, x: torch.Tensor) -> bool:
        return (
            x.shape[:-1].numel() == 1
            and x.device.type == "cpu"
            and x.dtype == self.weight.dtype == torch.float32
            and self.weight.numel() >= self.MIN_WEIGHTS
            and self.in_features % 2 == 0
            and self.weight.is_contiguous()
        )


def with_fast_matvec(model: ModuleT) -> ModuleT:
    """`model`, each of its plain nn.Linear layers now a FastMatvecLinear over the same
    weights, for decoding one token at a time (generate.py's Decoder asks for it). Names,
    weights and ties stay as they were; a batch of rows computes exactly as before."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:  # exactly the plain layer: nothing else to keep
                fast = FastMatvecLinear(
                    child.in_features, child.out_features, bias=False, device="meta"
                )
                fast.weight, fast.bias = child.weight, child.bias  # the same tensors
                fast.train(child.training)
                setattr(module, name, fast)
    return model


def two_column_product(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """x @ weight.T + bias for one row x, as a product of the halves of weight's rows with
    the two halves of x (FastMatvecLinear's docstring)."""
    out_features, half = weight.size(0), weight.size(1) // 2
    halves = weight.view(2 * out_features, half)  # row 2r + i: half i of row r
    products = halves @ x.reshape(2, half).t()  # (2 * out, 2): every half with every half
    y = products.view(out_features, 2, 2).diagonal(dim1=1, dim2=2).sum(-1)  # (out,)
    if bias is not None:
        y = y + bias
    return y.view(*x.shape[:-1], out_features)


@functools.cache
def two_columns_pay(out_features: int, in_features: int) -> bool:
    """Whether the two-column product beats the plain one for this shape on this CPU,
    timed on first use (a few ms). Kept only if clearly faster, so that a noisy moment does
    not flip the choice between runs."""
    weight, bias = torch.randn(out_features, in_features), torch.randn(out_features)
    x = torch.randn(1, in_features)
    with torch.no_grad():
        plain = _fastest_call(lambda: F.linear(x, weight, bias))
        two_columns = _fastest_call(lambda: two_column_product(x, weight, bias))
    return two_columns * 1.25 < plain


def _fastest_call(call: Callable[[], object], rounds: int = 5, calls: int = 5) -> float:
    call()  # warm up
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        times.append(time.perf_counter() - start)
    return min(times)


class ReluSquared(torch.autograd.Function):
    """relu(x)² with a backward of two products, grad * relu(x) * 2, where autograd's
    chain (square, then relu) takes four passes over the activations. The same numbers,
    bit for bit: a product by 2 is exact."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        relu = F.relu(x)
        ctx.save_for_backward(relu)
        return relu * relu

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        (relu,) = ctx.saved_tensors  # type: ignore[attr-defined]  # set by save_for_backward
        return (grad * relu).mul_(2)


def relu_squared(x: torch.Tensor) -> torch.Tensor:
    return ReluSquared.apply(x)


def make_norm(config: ModelConfig, size: int) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(size)
    return nn.LayerNorm(size, bias=config.bias)


def rotary_tables(config: ModelConfig, base: float = 10_000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of each position's rotation angles: two (block_size, hs // 2) tables."""
    hs = config.n_embd // config.n_head
    inv_freq = base ** (-torch.arange(0, hs, 2, dtype=torch.float32) / hs)  # (hs/2,)
    angles = torch.outer(torch.arange(config.block_size, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair of channels (first half, second half) by its position's angle."""
    x1, x2 = x.float().chunk(2, dim=-1)  # (B, nh, T, hs/2) each
    rotated = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return rotated.type_as(x)
