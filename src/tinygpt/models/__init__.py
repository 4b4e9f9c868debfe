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
    """Where a model's parameters are, part by part, in one line: `wte 8,320; blocks 4 x
    197,376 (ln_1 128, attn 65,536, ln_2 128, mlp 131,072); lm_head 8,320`, by the names a
    reader finds in the model's code (a part's own tensors by theirs: `skip 2`), with the
    plain name of what is not the lecture's (`ngram (pair table) 278,850`). Identical blocks
    are said once; a tensor shared by two parts (a tied head) counts where it first appears,
    so the parts add up to the total."""
    seen: set[int] = set()

    def count(module: nn.Module, recurse: bool = True) -> int:
        fresh = [p for p in module.parameters(recurse) if id(p) not in seen]
        seen.update(id(p) for p in fresh)
        return sum(p.numel() for p in fresh)

    def own(module: nn.Module) -> list[tuple[str, int]]:
        """The tensors a module holds itself (a block's mixing weights, smear's gates)."""
        fresh = [(n, p) for n, p in module.named_parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for _, p in fresh)
        return [(name, p.numel()) for name, p in fresh]

    def parts(module: nn.Module) -> list[tuple[str, int]]:
        rows = [(name, count(child)) for name, child in module.named_children()]
        rows += own(module)
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
            pieces.append(f"{PLAIN_NAMES.get(name, name)} {n:,}")
    pieces += [f"{PLAIN_NAMES.get(name, name)} {n:,}" for name, n in own(model)]
    return "; ".join(pieces)


# what a part that is not in the lecture does, said beside its name in the code
PLAIN_NAMES = {
    "ngram": "ngram (pair table)",
    "smear_gates": "smear_gates (gates of the last tokens' embeddings)",
    "value_embeds": "value_embeds (a token table per block, added to attention's values)",
}


def print_parameter_table(model: nn.Module, out: TextIO) -> None:
    total = count_parameters(model)
    print(f"{total:,} parameters ({total / 1e6:.6f}M)", file=out)
    print(parameter_summary(model), file=out)
