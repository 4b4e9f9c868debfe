"""The language models: each a LanguageModel (base.py), made by `build_model` from a config."""

from __future__ import annotations

from typing import TextIO

from torch import nn

from tinygpt.config import ModelConfig
from tinygpt.models.base import LanguageModel
from tinygpt.models.bigram import BigramLanguageModel
from tinygpt.models.gpt import GPT
from tinygpt.models.lecture import LectureLanguageModel

__all__ = ["LanguageModel", "build_model", "count_parameters", "print_parameter_table"]


def build_model(config: ModelConfig, vocab_size: int) -> LanguageModel:
    """A freshly initialised model for a config; the vocabulary size comes from the tokenizer."""
    if config.arch == "bigram":
        return BigramLanguageModel(vocab_size)
    if config.arch == "gpt":
        return GPT(config, vocab_size)
    if config.arch == "lecture":
        return LectureLanguageModel(config, vocab_size)
    raise ValueError(f"unknown model architecture {config.arch!r}")  # config validation stops it


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (a tied matrix counts once)."""
    return sum(p.numel() for p in model.parameters())


def parameter_summary(model: nn.Module) -> str:
    """Where a model's parameters are, part by part, in one line: `wte 8,320; 4 blocks of
    197,376 each (ln_1 128, attn 65,536, ln_2 128, mlp 131,072); lm_head 8,320`. Identical
    blocks are said once; a tensor shared by two parts (a tied head) counts where it first
    appears, so the parts add up to the total."""
    seen: set[int] = set()

    def count(module: nn.Module, recurse: bool = True) -> int:
        fresh = [p for p in module.parameters(recurse) if id(p) not in seen]
        seen.update(id(p) for p in fresh)
        return sum(p.numel() for p in fresh)

    def parts(module: nn.Module) -> list[tuple[str, int]]:
        rows = [(name, count(child)) for name, child in module.named_children()]
        rows.append(("own", count(module, recurse=False)))  # e.g. a block's mixing weights
        return [(name, n) for name, n in rows if n]

    pieces = []
    for name, child in model.named_children():
        if isinstance(child, nn.ModuleList | nn.Sequential) and len(child) > 1:
            per_block = [parts(block) for block in child]
            same = all(rows == per_block[0] for rows in per_block)
            for rows in per_block[:1] if same else per_block:
                inside = ", ".join(f"{part} {n:,}" for part, n in rows)
                each = sum(n for _, n in rows)
                times = f"{len(child)} x " if same else ""
                pieces.append(f"{name} {times}{each:,}" + (f" ({inside})" if len(rows) > 1 else ""))
        elif n := count(child):
            pieces.append(f"{name} {n:,}")
    if own := count(model, recurse=False):
        pieces.append(f"own {own:,}")
    return "; ".join(pieces)


def print_parameter_table(model: nn.Module, out: TextIO) -> None:
    total = count_parameters(model)
    print(f"{total:,} parameters ({total / 1e6:.6f}M)", file=out)
    print(parameter_summary(model), file=out)
