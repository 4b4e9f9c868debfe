"""The Transformer: tokens talk to each other through causal self-attention.

One GPT class. The lecture's model is the default; modern choices are switches on the same
class (`rotary`, `norm="rmsnorm"`, `qk_norm`, `activation="relu2"`, `tie_weights=False`,
`zero_init`, `embed_skip`, `value_embeds`, `smear`, `ngram`, `logit_softcap`), each a few
lines below rather than a model of its own. `smear` and `ngram` hand the model the last few
tokens directly (their embeddings, a table of logits); their arithmetic is lookback.py's.

Shapes: B batch, T time (tokens), C n_embd, nh heads, hs head size (C // nh), V vocabulary.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tinygpt.config import ModelConfig, ngram_parameters
from tinygpt.models.base import LanguageModel
from tinygpt.models.layers import (
    apply_rotary,
    make_norm,
    relu_squared,
    rotary_tables,
)
from tinygpt.models.lookback import ngram_log_frequencies, ngram_rows, smeared_embeddings


@dataclass
class KVCache:
    """Keys and values of the tokens seen so far, per layer, and the tokens themselves, for
    incremental decoding.

    In a forward pass each layer writes the new tokens' keys and values at positions
    [pos, pos + T) and attends to [0, pos + T); the model then calls `advance(T)`. `reset()`
    empties the cache for a new window (the old entries are overwritten, not cleared).
    A batch whose rows have read different lengths (a server decoding many requests at
    once) keeps one position per row in `lengths` instead of the one `pos`.
    """

    keys: list[torch.Tensor]  # n_layer x (B, nh, max_len, hs)
    values: list[torch.Tensor]
    tokens: torch.Tensor  # (B, max_len): the window's token ids, for looking back (smear)
    pos: int = 0
    lengths: torch.Tensor | None = None  # (B,): each row's own pos, where the rows differ
    max_len: int = field(init=False)

    def __post_init__(self) -> None:
        self.max_len = self.keys[0].size(2)

    @classmethod
    def empty(
        cls, config: ModelConfig, batch_size: int, device: torch.device, dtype: torch.dtype
    ) -> KVCache:
        hs = config.n_embd // config.n_head
        shape = (batch_size, config.n_head, config.block_size, hs)
        make = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(2 * config.n_layer)]
        tokens = torch.zeros(batch_size, config.block_size, device=device, dtype=torch.long)
        return cls(keys=make[: config.n_layer], values=make[config.n_layer :], tokens=tokens)

    def positions(self, T: int) -> torch.Tensor:
        """The positions of the next T tokens: (T,) for every row, or (B, T) row by row."""
        steps = torch.arange(T, device=self.tokens.device)
        return steps + self.pos if self.lengths is None else self.lengths[:, None] + steps

    def end(self, T: int) -> int:
        """How many positions the longest row holds after the next T tokens."""
        return self.pos + T if self.lengths is None else int(self.lengths.max()) + T

    def extend(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, bool]:
        """Store a layer's new (B, nh, T, hs) keys and values; return all of the window's,
        (B, nh, end, hs), with the attention mask to use and whether it is the causal one."""
        T = k.size(2)
        start, end = self.pos, self.end(T)
        if self.lengths is None:
            self.keys[layer][:, :, start:end] = k
            self.values[layer][:, :, start:end] = v
        else:  # each row writes at its own positions
            positions = self.positions(T)  # (B, T)
            rows = torch.arange(k.size(0), device=k.device)[:, None]
            self.keys[layer][rows, :, positions] = k.transpose(1, 2)  # (B, T, nh, hs) slots
            self.values[layer][rows, :, positions] = v.transpose(1, 2)
        keys, values = self.keys[layer][:, :, :end], self.values[layer][:, :, :end]
        if self.lengths is not None:  # each row sees its own tokens, up to itself
            allowed = torch.arange(end, device=k.device) <= self.positions(T)[..., None]
            return keys, values, allowed[:, None], False  # (B, 1, T, end)
        if start == 0:
            return keys, values, None, True  # a fresh prompt: the usual causal mask
        if T == 1:
            return keys, values, None, False  # one new token sees everything before it
        allowed = torch.ones(T, end, dtype=torch.bool, device=k.device).tril(diagonal=start)
        return keys, values, allowed, False

    def reset(self) -> None:
        self.pos = 0

    # --- a ragged batch: rows that join, leave and restart on their own ------------------

    def make_ragged(self) -> KVCache:
        """This cache with a position per row (all at 0): rows fill it one by one."""
        self.lengths = torch.zeros(self.tokens.size(0), dtype=torch.long, device=self.tokens.device)
        return self

    def first_rows(self, n: int) -> KVCache:
        """A view of the first n rows: what it writes, this cache holds."""
        assert self.lengths is not None, "a ragged cache"
        return KVCache(
            keys=[k[:n] for k in self.keys],
            values=[v[:n] for v in self.values],
            tokens=self.tokens[:n],
            lengths=self.lengths[:n],
        )

    def copy_row(self, to: int, source: KVCache, row: int) -> None:
        """Row `to` of this ragged cache becomes row `row` of `source` (this one or another),
        as far as that row has read."""
        assert self.lengths is not None, "a ragged cache"
        n = source.pos if source.lengths is None else int(source.lengths[row])
        for mine, theirs in zip(self.keys + self.values, source.keys + source.values, strict=True):
            mine[to, :, :n] = theirs[row, :, :n]
        self.tokens[to, :n] = source.tokens[row, :n]
        self.lengths[to] = n

    def advance(self, tokens: int) -> None:
        self.pos += tokens
        if self.lengths is not None:
            self.lengths += tokens


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.n_head, self.layer = config.n_head, layer
        self.head_size = config.n_embd // config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.qk_norm = config.qk_norm
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)
        self.recorded: list[torch.Tensor] | None = None  # attention weights, when asked for

    def forward(
        self,
        x: torch.Tensor,
        value_embed: torch.Tensor | None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None,
        cache: KVCache | None,
    ) -> torch.Tensor:
        B, T, C = x.shape
        nh, hs = self.n_head, self.head_size
        qkv = self.c_attn(x)  # (B, T, 3C)
        # queries and keys as one tensor of 2 nh heads: normed and rotated in one pass each
        qk = qkv[..., : 2 * C].view(B, T, 2 * nh, hs)
        v = qkv[..., 2 * C :]  # (B, T, C)
        if value_embed is not None:  # the token's identity, straight into what it offers
            v = v + value_embed
        if self.qk_norm:  # keeps attention logits bounded at high learning rates
            qk = F.rms_norm(qk, (hs,))
        if rotary is not None:
            cos, sin = rotary  # (T, hs/2), or (B, T, hs/2) in a ragged batch: for every head
            qk = apply_rotary(qk, cos.unsqueeze(-2), sin.unsqueeze(-2))
        q, k = qk.transpose(1, 2).split(nh, dim=1)  # 2 x (B, nh, T, hs)
        v = v.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        mask, is_causal = None, True
        if cache is not None:
            k, v, mask, is_causal = cache.extend(self.layer, k, v)  # (B, nh, pos + T, hs)
        if self.recorded is not None:
            y = self._attend_and_record(q, k, v)
        else:
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                is_causal=is_causal,
                dropout_p=self.dropout if self.training else 0.0,
            )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads
        return self.resid_dropout(self.c_proj(y))

    def _attend_and_record(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The lecture's attention, written out: what scaled_dot_product_attention computes,
        keeping the weights (B, nh, T, T) in `recorded` (no cache, no dropout)."""
        T = q.size(2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_size)  # (B, nh, T, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        weights = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        self.recorded.append(weights)  # type: ignore[union-attr]  # a list: forward checked
        return weights @ v  # (B, nh, T, hs)


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_tanh": functools.partial(F.gelu, approximate="tanh"),  # what GPT-2 was trained with
    "relu": F.relu,
    "relu2": relu_squared,  # sparse and cheap, works well in speedruns
}


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        if config.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {config.activation!r}")
        self.activation = ACTIVATIONS[config.activation]
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.activation(self.c_fc(x))  # (B, T, 4C)
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    """Pre-norm Transformer block: communication (attention), then computation (MLP)."""

    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.ln_1 = make_norm(config, config.n_embd)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = make_norm(config, config.n_embd)
        self.mlp = MLP(config)
        # weights of (this block's input, the token embedding) in what the block reads
        self.skip = nn.Parameter(torch.tensor([1.0, 0.0])) if config.embed_skip else None

    def forward(
        self,
        x: torch.Tensor,
        x0: torch.Tensor,
        value_embed: torch.Tensor | None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None,
        cache: KVCache | None,
    ) -> torch.Tensor:
        if self.skip is not None:
            x = self.skip[0] * x + self.skip[1] * x0
        x = x + self.attn(self.ln_1(x), value_embed, rotary, cache)
        x = x + self.mlp(self.ln_2(x))
        return x


def _switch_name(name: str, value: object) -> str:
    """A config switch in a few letters: `rotary`, `no bias`, `untied`, `rmsnorm`, `dropout 0.2`."""
    if name == "tie_weights":
        return "tied" if value else "untied"
    if isinstance(value, bool):
        return name if value else f"no {name}"
    return str(value) if isinstance(value, str) else f"{name} {value}"


class GPT(LanguageModel):
    """The module names are GPT-2's (wte, wpe, ln_f, lm_head; c_attn, c_proj, c_fc), so its
    weights map onto GPT-2 checkpoints by name, with `blocks` for GPT-2's `h`."""

    supports_kv_cache = True
    supports_attention_maps = True  # attention_weights()
    supports_block_crop = True  # crop_block_size()
    rotary_cos: torch.Tensor  # (block_size, hs/2), buffers when config.rotary
    rotary_sin: torch.Tensor

    def __init__(self, config: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(vocab_size, config.n_embd)
        self.wpe = None if config.rotary else nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.value_embeds = None
        if config.value_embeds:  # a vocab x C table per block: cheap with a small vocabulary
            tables = (nn.Embedding(vocab_size, config.n_embd) for _ in range(config.n_layer))
            self.value_embeds = nn.ModuleList(tables)
        self.ln_f = make_norm(config, config.n_embd)
        self.smear_gates = None
        if config.smear:  # (smear, C): how much of the embedding 1, 2, ... tokens back to add
            self.smear_gates = nn.Parameter(torch.zeros(config.smear, config.n_embd))
        self.ngram = None
        if config.ngram:  # the lecture's bigram table, or one row per pair of tokens
            rows = ngram_parameters(config.ngram, vocab_size) // vocab_size
            self.ngram = nn.Embedding(rows, vocab_size)
        self.lm_head = nn.Linear(config.n_embd, vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.wte.weight  # one matrix reads and writes tokens
        if config.rotary:
            cos, sin = rotary_tables(config)
            self.register_buffer("rotary_cos", cos, persistent=False)
            self.register_buffer("rotary_sin", sin, persistent=False)
        self.apply(self._init_weights)
        residual_std = 0.02 / math.sqrt(2 * config.n_layer)  # GPT-2: keep the residual sum O(1)
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=residual_std)
        if config.zero_init:  # every block starts as the identity; the head starts uniform
            for name, param in self.named_parameters():
                if name.endswith("c_proj.weight") or name in ("lm_head.weight", "ngram.weight"):
                    nn.init.zeros_(param)  # a tied head is the embedding: not listed here

    def crop_block_size(self, block_size: int) -> None:
        """Keep the first `block_size` positions (fine-tuning GPT-2's 1,024 with a shorter
        context): the position table, or the rotary tables, are cut; nothing else depends
        on the context length."""
        if not 1 <= block_size <= self.config.block_size:
            raise ValueError(f"block_size {block_size} is not in 1..{self.config.block_size}")
        self.config = dataclasses.replace(self.config, block_size=block_size)
        if self.wpe is not None:
            self.wpe.weight = nn.Parameter(self.wpe.weight[:block_size].detach().clone())
            self.wpe.num_embeddings = block_size
        else:
            self.rotary_cos = self.rotary_cos[:block_size]
            self.rotary_sin = self.rotary_sin[:block_size]

    def new_cache(self, batch_size: int) -> KVCache:
        param = self.wte.weight
        return KVCache.empty(self.config, batch_size, param.device, param.dtype)

    def hidden_matrices(self) -> list[nn.Parameter]:
        """The 2-D weights inside the blocks, which Muon trains (not embeddings, not the head)."""
        return [p for block in self.blocks for p in block.parameters() if p.dim() == 2]

    @torch.no_grad()
    def attention_weights(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T) tokens -> (n_layer, B, nh, T, T): how much each position attends to every
        position up to it, per layer and head (each row sums to 1)."""
        attentions = [cast(Block, block).attn for block in self.blocks]
        for attn in attentions:
            attn.recorded = []
        try:
            self(idx)
            return torch.stack([attn.recorded[0] for attn in attentions])  # type: ignore[index]  # lists
        finally:
            for attn in attentions:
                attn.recorded = None

    def describe(self) -> str:
        """Its shape, and the switches set away from their defaults."""
        c = self.config
        shape = ("arch", "block_size", "n_layer", "n_head", "n_embd")
        changed = [
            (f.name, getattr(c, f.name))
            for f in dataclasses.fields(c)
            if f.name not in shape and getattr(c, f.name) != f.default
        ]
        switches = [_switch_name(name, value) for name, value in changed]
        return (
            f"GPT, {c.n_layer} layers x {c.n_head} heads x {c.n_embd} wide, context "
            f"{c.block_size}" + (f" ({', '.join(switches)})" if switches else "")
        )

    def uniform_loss(self) -> float | None:
        # the logits are the head's product plus the pair table's row: both zero, whatever x
        heads = [self.lm_head.weight, self.ngram.weight if self.ngram is not None else None]
        if any(weight is not None and bool(weight.any()) for weight in heads):
            return None
        return math.log(self.lm_head.out_features)

    @torch.no_grad()
    def warm_start(self, train_tokens: np.ndarray) -> None:
        # a fraction of the counted log-probabilities: the full ones (the pair table alone
        # is a trigram model) leave the blocks too little to learn, and train worse
        if self.ngram is not None and self.config.ngram_counts:
            counted = ngram_log_frequencies(
                train_tokens, self.config.ngram, self.ngram.embedding_dim
            )
            self.ngram.weight.copy_(self.config.ngram_counts * counted)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def looks_back(self) -> bool:
        """Whether a token's own inputs include the tokens before it (smear, a pair table):
        only then does a cached pass keep the window's token ids."""
        return self.smear_gates is not None or self.config.ngram == 3

    def _embed(
        self, idx: torch.Tensor, positions: torch.Tensor, cache: KVCache | None
    ) -> torch.Tensor:
        """(B, T) tokens -> (B, T, C) embeddings, smeared with the ones before (lookback.py)."""
        if self.smear_gates is None:
            return self.wte(idx)
        return smeared_embeddings(self.wte, self.smear_gates, idx, positions, cache)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        T = idx.size(1)
        end = cache.end(T) if cache is not None else T
        if end > self.config.block_size:
            raise ValueError(f"{end} positions exceed block_size {self.config.block_size}")
        # (T,), or (B, T) where the cache's rows are at different lengths
        positions = cache.positions(T) if cache is not None else torch.arange(T, device=idx.device)
        if cache is not None and self.looks_back:  # the window's earlier tokens, kept
            cache.tokens.scatter_(1, positions.expand_as(idx), idx)
        x = self._embed(idx, positions, cache)  # (B, T, C)
        rotary = None
        if self.wpe is not None:
            x = x + self.wpe(positions)  # (T, C) or (B, T, C)
        else:
            rotary = (self.rotary_cos[positions], self.rotary_sin[positions])
        x = self.drop(x)
        x0 = x
        for i, block in enumerate(self.blocks):
            value_embed = self.value_embeds[i](idx) if self.value_embeds is not None else None
            x = block(x, x0, value_embed, rotary, cache)  # (B, T, C)
        x = self.ln_f(x)
        logits = self.lm_head(x)  # (B, T, V)
        if self.ngram is not None:  # local statistics, learned directly: (B, T, V)
            rows = ngram_rows(self.config.ngram, self.ngram.embedding_dim, idx, positions, cache)
            logits = logits + self.ngram(rows)
        if self.config.logit_softcap > 0:  # confident but never unboundedly so
            cap = self.config.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        if cache is not None:
            cache.advance(T)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        return logits, loss
