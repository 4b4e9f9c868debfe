"""A tinygpt GPT as a transformers model (shipped in exported folders): torch and
transformers only, the same parameter names and arithmetic as tinygpt's models/gpt.py.

Generating reads one new token a step against a KV cache (transformers' `DynamicCache`),
and past the context slides the window as `tinygpt sample` does by default: when it is
full, it keeps its last `window_keep` tokens, reads them afresh into an emptied cache and
grows again. The logits are tinygpt's to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_tinygpt import TinyGPTConfig

# the keyword (and output field) of the KV cache: `cache` from transformers 5,
# `past_key_values` before
CACHE_NAME = (
    "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
)


def relu_squared(x: torch.Tensor) -> torch.Tensor:
    relu = F.relu(x)
    return relu * relu


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "relu2": relu_squared,
}


def make_norm(config: TinyGPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd)
    return nn.LayerNorm(config.n_embd, bias=config.bias)


def rotary_tables(config: TinyGPTConfig) -> tuple[torch.Tensor, torch.Tensor]:
    hs = config.n_embd // config.n_head
    inv_freq = 10_000.0 ** (-torch.arange(0, hs, 2, dtype=torch.float32) / hs)  # (hs/2,)
    angles = torch.outer(torch.arange(config.block_size, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)


def attention_mask(new: int, past: int, device: torch.device) -> torch.Tensor | None:
    """Which keys each of `new` queries may read when `past` keys come before them (None:
    all of them, one new token)."""
    if new == 1:
        return None
    return torch.ones(new, past + new, dtype=torch.bool, device=device).tril(diagonal=past)


class Attention(nn.Module):
    def __init__(self, config: TinyGPTConfig, layer: int) -> None:
        super().__init__()
        self.n_head, self.qk_norm, self.layer = config.n_head, config.qk_norm, layer
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)

    def forward(
        self, x: torch.Tensor, value_embed: torch.Tensor | None, rotary: Any, cache: Any
    ) -> torch.Tensor:
        B, T, C = x.shape
        nh, hs = self.n_head, C // self.n_head
        qkv = self.c_attn(x)  # (B, T, 3C)
        qk = qkv[..., : 2 * C].view(B, T, 2 * nh, hs)
        v = qkv[..., 2 * C :]
        if value_embed is not None:
            v = v + value_embed
        if self.qk_norm:
            qk = F.rms_norm(qk, (hs,))
        if rotary is not None:
            cos, sin = rotary  # (T, hs/2)
            qk = apply_rotary(qk, cos.unsqueeze(-2), sin.unsqueeze(-2))
        q, k = qk.transpose(1, 2).split(nh, dim=1)  # (B, nh, T, hs) each
        v = v.view(B, T, nh, hs).transpose(1, 2)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # the keys and values so far, these appended: (B, nh, past + T, hs)
            past = cache.get_seq_length(self.layer)
            k, v = cache.update(k, v, self.layer)
            causal = past == 0  # a window read afresh, as without a cache
            mask = None if causal else attention_mask(T, past, x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: TinyGPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.activation = ACTIVATIONS[config.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.activation(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config: TinyGPTConfig, layer: int) -> None:
        super().__init__()
        self.ln_1, self.attn = make_norm(config), Attention(config, layer)
        self.ln_2, self.mlp = make_norm(config), MLP(config)
        self.skip = nn.Parameter(torch.tensor([1.0, 0.0])) if config.embed_skip else None

    def forward(
        self, x: torch.Tensor, x0: torch.Tensor, value_embed: Any, rotary: Any, cache: Any
    ) -> torch.Tensor:
        if self.skip is not None:
            x = self.skip[0] * x + self.skip[1] * x0
        x = x + self.attn(self.ln_1(x), value_embed, rotary, cache)
        return x + self.mlp(self.ln_2(x))


class TinyGPTForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = TinyGPTConfig
    config: TinyGPTConfig
    base_model_prefix = ""
    main_input_name = "input_ids"

    def __init__(self, config: TinyGPTConfig) -> None:
        super().__init__(config)
        V, C = config.vocab_size, config.n_embd
        self.wte = nn.Embedding(V, C)
        self.wpe = None if config.rotary else nn.Embedding(config.block_size, C)
        self.blocks = nn.ModuleList(Block(config, layer) for layer in range(config.n_layer))
        self.value_embeds = None
        if config.value_embeds:
            self.value_embeds = nn.ModuleList(nn.Embedding(V, C) for _ in range(config.n_layer))
        self.ln_f = make_norm(config)
        self.smear_gates = nn.Parameter(torch.zeros(config.smear, C)) if config.smear else None
        self.ngram = None
        if config.ngram:  # a row of logits per last token, or per pair of the last two
            self.ngram = nn.Embedding(V if config.ngram == 2 else (V + 1) * V, V)
        self.lm_head = None if config.tie_weights else nn.Linear(C, V, bias=False)
        if config.rotary:
            cos, sin = rotary_tables(config)
            self.register_buffer("rotary_cos", cos, persistent=False)
            self.register_buffer("rotary_sin", sin, persistent=False)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """The weights come from the folder; a buffer computed here is all there is to set."""
        if module is self and self.config.rotary:
            self.rotary_cos, self.rotary_sin = rotary_tables(self.config)

    def get_input_embeddings(self) -> nn.Module:
        return self.wte

    @property
    def lookback(self) -> int:
        """How many earlier tokens a token's embedding and logits read: smear's lags, and
        one for the pair table."""
        return max(self.config.smear, 1 if self.config.ngram == 3 else 0)

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, T, C): each token plus the gated embeddings of those before it."""
        if self.smear_gates is None:
            return self.wte(idx)
        lags, T = self.smear_gates.size(0), idx.size(1)
        earlier = F.pad(idx, (lags, 0), value=-1)  # (B, lags + T): -1 before the window
        known = (earlier >= 0).unsqueeze(-1).to(self.wte.weight.dtype)
        emb = self.wte(earlier.clamp(min=0)) * known
        x = emb[:, lags:]
        for lag, gate in enumerate(self.smear_gates, start=1):
            x = x + gate * emb[:, lags - lag : lags - lag + T]
        return x

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        context_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """(B, T) token ids -> (B, T, V) logits. With a cache (keyword CACHE_NAME), the ids
        are those after the ones it holds, it is extended with them, and `context_ids` are the
        window's tokens it holds: smear and the pair table read back that far."""
        cache = kwargs.get(CACHE_NAME)
        past = 0 if cache is None else cache.get_seq_length()
        idx = input_ids if cache is not None else input_ids[:, -self.config.block_size :]
        T = idx.size(1)
        if past + T > self.config.block_size:
            raise ValueError(f"{past} cached and {T} new tokens exceed the context")
        earlier = idx[:, :0]
        if past and self.lookback:
            if context_ids is None:
                raise ValueError("a cached step of this model needs context_ids: the tokens cached")
            earlier = context_ids[:, -self.lookback :]
        seen = torch.cat((earlier, idx), dim=1)  # (B, E + T): the new tokens and their lookback
        E = earlier.size(1)
        x = self.embed(seen)[:, E:]
        positions = torch.arange(past, past + T, device=idx.device)
        rotary = None
        if self.wpe is not None:
            x = x + self.wpe(positions)
        else:
            rotary = (self.rotary_cos[positions], self.rotary_sin[positions])
        x0 = x
        for i, block in enumerate(self.blocks):
            value_embed = self.value_embeds[i](idx) if self.value_embeds is not None else None
            x = block(x, x0, value_embed, rotary, cache)
        x = self.ln_f(x)
        logits = self.lm_head(x) if self.lm_head is not None else F.linear(x, self.wte.weight)
        if self.ngram is not None:
            V = self.config.vocab_size
            if self.config.ngram == 2:
                rows = idx
            else:  # the pair (previous, this), -1 before the window
                rows = ((F.pad(seen, (1, 0), value=-1)[:, :-1] + 1) * V + seen)[:, E:]
            logits = logits + self.ngram(rows)
        if self.config.logit_softcap > 0:
            cap = self.config.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        loss = None
        if labels is not None:  # transformers' convention: labels are the inputs, shifted here
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, -T:][:, 1:].flatten()
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_NAME: cache})

    def prepare_inputs_for_generation(self, input_ids: torch.Tensor, **kwargs: Any) -> dict:
        """A step's input: the newest token against the cache, or, on the first step and each
        time the window slides, the whole window into an empty cache."""
        window = sampler_window(input_ids, self.config)
        cache = kwargs.get(CACHE_NAME)
        if cache is None:  # use_cache=False: each window is read afresh
            return {"input_ids": window}
        past = cache.get_seq_length()
        if 0 < past == window.size(1) - 1:
            return {
                "input_ids": window[:, past:],
                "context_ids": window[:, :past],
                CACHE_NAME: cache,
            }
        return {"input_ids": window, CACHE_NAME: DynamicCache()}


def sampler_window(input_ids: torch.Tensor, config: TinyGPTConfig) -> torch.Tensor:
    """The window tinygpt's sampler would see after these tokens: all of them up to the
    context, then, each time it fills, its last `window_keep`, growing again."""
    n, block, keep = input_ids.size(1), config.block_size, config.window_keep
    if n > block:
        n = keep + (n - block - 1) % (block - keep + 1)
    return input_ids[:, -n:]
