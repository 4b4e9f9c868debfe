"""Two ways a small GPT sees the last few tokens directly, which it would otherwise spend
most of a short run learning to look up: `smear` (each token's embedding plus gated
embeddings of the tokens before it) and the n-gram table (logits looked up by the last token,
the lecture's bigram, or by the last two), which can start from the training split's counts,
as the lecture's first bigram model is. The GPT owns their weights; here is their
arithmetic, so that the model's own forward stays the lecture's.

In a cached pass (decoding) the tokens before the new ones come from the cache's copy of the
window; in a full pass a window's first tokens have none before them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
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


COUNTED_TOKENS = 1 << 24  # a large corpus's first 16M tokens say enough about its n-grams
SMOOTHING = 1.0, 2.0  # add-k counts: bigrams towards the unigram, pairs towards the bigram


def ngram_log_frequencies(tokens: np.ndarray, n: int, vocab_size: int) -> torch.Tensor:
    """(N,) token ids -> the n-gram table's rows as log-probabilities of the next token,
    counted in `tokens`: (V, V) by the last token (n=2), or ((V + 1) * V, V) by the last two
    (n=3; a window's first token, with none before it, gets the bigram's row).

    Each order is smoothed towards the one below it (add-k, SMOOTHING), so that a pair never
    seen gets its bigram's guess rather than minus infinity."""
    V, to_bigram, to_pair = vocab_size, *SMOOTHING
    t = torch.from_numpy(np.asarray(tokens[:COUNTED_TOKENS], dtype=np.int64))
    unigram = torch.bincount(t, minlength=V).double() + 1  # (V,): no token has zero chance
    unigram /= unigram.sum()
    pairs = torch.bincount(t[:-1] * V + t[1:], minlength=V * V).double().view(V, V)
    bigram = (pairs + to_bigram * unigram) / (pairs.sum(1, keepdim=True) + to_bigram)
    if n == 2:
        return bigram.log().float()
    flat = (t[:-2] * V + t[1:-1]) * V + t[2:]  # (before, last, next) as one index
    triples = torch.bincount(flat, minlength=V**3).double().view(V, V, V)
    trigram = (triples + to_pair * bigram) / (triples.sum(2, keepdim=True) + to_pair)
    rows = torch.cat([bigram.unsqueeze(0), trigram])  # (V + 1, V, V): 'none' before first
    return rows.view((V + 1) * V, V).log().float()
