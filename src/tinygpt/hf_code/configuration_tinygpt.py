"""The configuration of a tinygpt GPT as transformers reads it (shipped in exported folders)."""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig


class TinyGPTConfig(PretrainedConfig):
    """tinygpt's model config (its `[model]` section): a GPT whose switches GPT-2 has no
    place for (rotary, RMSNorm, smear, ...), or the lecture's model at `lecture_step`."""

    model_type = "tinygpt"
    attribute_map = {  # noqa: RUF012  # transformers reads it as a class attribute: its usual names
        "num_hidden_layers": "n_layer",
        "num_attention_heads": "n_head",
        "hidden_size": "n_embd",
    }

    def __init__(
        self,
        vocab_size: int = 65,
        block_size: int = 64,
        n_layer: int = 2,
        n_head: int = 2,
        n_embd: int = 64,
        bias: bool = True,
        rotary: bool = False,
        norm: str = "layernorm",
        qk_norm: bool = False,
        activation: str = "gelu",
        tie_weights: bool = True,
        embed_skip: bool = False,
        value_embeds: bool = False,
        smear: int = 0,
        ngram: int = 0,
        logit_softcap: float = 0.0,
        window_keep: int = 32,
        lecture_step: str = "",
        dropout: float = 0.0,
        **kwargs: Any,
    ) -> None:
        self.vocab_size, self.block_size = vocab_size, block_size
        self.n_layer, self.n_head, self.n_embd = n_layer, n_head, n_embd
        self.bias, self.rotary, self.norm, self.qk_norm = bias, rotary, norm, qk_norm
        self.activation, self.tie_weights = activation, tie_weights
        self.embed_skip, self.value_embeds = embed_skip, value_embeds
        self.smear, self.ngram, self.logit_softcap = smear, ngram, logit_softcap
        self.window_keep = window_keep  # what a full window keeps when a token arrives
        self.lecture_step, self.dropout = lecture_step, dropout  # the lecture's model
        kwargs.setdefault("tie_word_embeddings", False)  # a tied head reads wte itself
        super().__init__(**kwargs)
