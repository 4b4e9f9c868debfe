"""Two ways a small GPT sees the last few tokens directly, which it would otherwise spend
most of a short run learning to look up: `smear` (each token's embedding plus gated
embeddings of the tokens before it) and the n-gram table (logits looked up by the last token,
the lecture's bigram, or by the last two). The GPT owns their weights; here is their
arithmetic, so that the model's own forward stays the lecture's.

In a cached pass (decoding) the tokens before the new ones come from the cache's copy of the
window; in a full pass a window's first tokens have none before them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from tinygpt.models.gpt import KVCache


def with_earlier(
    idx: torch.Tensor, positions: torch.Tensor, cache: KVCache | None, back: int
) -> torch.Tensor:
    """(B, T) tokens at `positions` ((T,) or (B, T)) -> (B, back + T): the `back` tokens of
    the window before them, then them, with -1 where the window has none (before its first
    token, or without a cache)."""
    if cache is None:
        return F.pad(idx, (back, 0), value=-1)
    B, T = idx.shape
    steps = torch.arange(-back, T, device=idx.device)  # (back + T,)
    wanted = (positions[..., :1] + steps).expand(B, back + T)  # the cache's columns
    earlier = cache.tokens.gather(1, wanted.clamp(min=0))
    return earlier.masked_fill(wanted < 0, -1)


def smeared_embeddings(
    wte: nn.Embedding,
    gates: torch.Tensor,
    idx: torch.Tensor,
    positions: torch.Tensor,
    cache: KVCache | None,
) -> torch.Tensor:
    """(B, T) tokens -> (B, T, C): each token's embedding plus, for lag 1..len(gates), the
    embedding of the token `lag` back times its (C,) gate (none before the window's first)."""
    lags, T = gates.size(0), idx.size(1)
    tokens = with_earlier(idx, positions, cache, lags)  # (B, lags + T)
    known = (tokens >= 0).unsqueeze(-1).to(wte.weight.dtype)  # (B, lags + T, 1): 0 for none
    emb = wte(tokens.clamp(min=0)) * known  # (B, lags + T, C)
    x = emb[:, lags:]  # (B, T, C)
    for lag, gate in enumerate(gates, start=1):
        x = x + gate * emb[:, lags - lag : lags - lag + T]  # the tokens `lag` back
    return x


def ngram_rows(
    n: int, vocab_size: int, idx: torch.Tensor, positions: torch.Tensor, cache: KVCache | None
) -> torch.Tensor:
    """(B, T) tokens -> (B, T) rows of the n-gram table: the token itself (n=2), or the
    pair of it and the token before it (n=3; a window's first token pairs with 'none')."""
    if n == 2:
        return idx
    before = with_earlier(idx, positions, cache, 1)[:, : idx.size(1)]  # (B, T): -1 for none
    return (before + 1) * vocab_size + idx
