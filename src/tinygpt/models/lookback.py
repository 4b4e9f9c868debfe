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
    idx: torch.Tensor, start: int, cache: KVCache | None, back: int
) -> tuple[torch.Tensor, int]:
    """(B, T) tokens -> (B, known + T) with the `known` (<= back) tokens of the window
    before them: in a cached pass they come from the cache, else there are none."""
    if cache is None:
        return idx, 0
    known = min(back, start)
    return cache.tokens[:, start - known : start + idx.size(1)], known


def smeared_embeddings(
    wte: nn.Embedding, gates: torch.Tensor, idx: torch.Tensor, start: int, cache: KVCache | None
) -> torch.Tensor:
    """(B, T) tokens -> (B, T, C): each token's embedding plus, for lag 1..len(gates), the
    embedding of the token `lag` back times its (C,) gate (none before the window's first)."""
    lags, T = gates.size(0), idx.size(1)
    idx, looked_back = with_earlier(idx, start, cache, lags)
    emb = wte(idx)  # (B, looked_back + T, C)
    x = emb[:, looked_back:]  # (B, T, C)
    emb = F.pad(emb, (0, 0, lags - looked_back, 0))  # (B, lags + T, C): zeros first
    for lag, gate in enumerate(gates, start=1):
        x = x + gate * emb[:, lags - lag : lags - lag + T]  # the tokens `lag` back
    return x


def ngram_rows(
    n: int, vocab_size: int, idx: torch.Tensor, start: int, cache: KVCache | None
) -> torch.Tensor:
    """(B, T) tokens -> (B, T) rows of the n-gram table: the token itself (n=2), or the
    pair of it and the token before it (n=3; a window's first token pairs with 'none')."""
    if n == 2:
        return idx
    T = idx.size(1)
    idx, known = with_earlier(idx, start, cache, 1)
    before = F.pad(idx, (1 - known, 0), value=-1)[:, :T]  # (B, T): -1 for none
    return (before + 1) * vocab_size + idx[:, known:]
