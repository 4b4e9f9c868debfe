"""The language models; every one has `forward(idx, targets=None) -> (logits, loss)`."""

from __future__ import annotations

from torch import nn

from tinygpt.config import ModelConfig
from tinygpt.models.bigram import BigramLanguageModel
from tinygpt.models.gpt import GPT


def build_model(config: ModelConfig, vocab_size: int) -> nn.Module:
    """A freshly initialised model for a config; the vocabulary size comes from the tokenizer."""
    if config.arch == "bigram":
        return BigramLanguageModel(vocab_size)
    if config.arch == "gpt":
        return GPT(config, vocab_size)
    raise ValueError(f"unknown model architecture {config.arch!r}")  # config validation stops it


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (a tied matrix counts once)."""
    return sum(p.numel() for p in model.parameters())
