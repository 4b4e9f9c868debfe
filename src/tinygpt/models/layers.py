"""The GPT's building blocks that are not its story: norms, rotary positions, and a Linear
with a faster matrix-vector product on CPUs."""

from __future__ import annotations

import torch
from torch import nn

from tinygpt.config import ModelConfig


class FastMatvecLinear(nn.Linear):
    """nn.Linear with a faster CPU product for one row of input (decoding a single token).

    MKL's float32 matrix-vector product reads a large weight matrix far below memory speed
    on some CPUs (about 10 GB/s on an AMD EPYC). Seen as a (2 * out, in / 2) matrix, each
    row split in halves, the weight times two columns (the two halves of x) is a matrix
    product over the same bytes that runs 2-3x faster; y is the sum of its diagonal pairs.
    The result agrees with the plain product to float rounding.
    """

    MIN_WEIGHTS = 3 << 16  # below ~768 KB the weights stay in cache and the plain product wins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._one_row_on_cpu(x):
            return super().forward(x)
        out_features, half = self.out_features, self.in_features // 2
        halves = self.weight.view(2 * out_features, half)  # row 2r + i: half i of row r
        products = halves @ x.reshape(2, half).t()  # (2 * out, 2): every half with every half
        y = products.view(out_features, 2, 2).diagonal(dim1=1, dim2=2).sum(-1)  # (out,)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], out_features)

    def _one_row_on_cpu(self, x: torch.Tensor) -> bool:
        return (
            x.shape[:-1].numel() == 1
            and x.device.type == "cpu"
            and x.dtype == self.weight.dtype == torch.float32
            and self.weight.numel() >= self.MIN_WEIGHTS
            and self.in_features % 2 == 0
            and self.weight.is_contiguous()
        )


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
