"""The next-token distribution after a prompt, at one or several temperatures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch

from tinygpt.checkpoint import Checkpoint
from tinygpt.generate import encode_prompt
from tinygpt.viz import save_figure
from tinygpt.viz.attention import VISIBLE


def distribution(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(V,) logits -> (V,) probabilities as sampling would draw them: softmax(logits / T);
    temperature 0 is greedy decoding, all the mass on the most likely token."""
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(), logits.numel()).float()
    return torch.softmax(logits.float() / temperature, dim=-1)


@dataclass
class NextToken:
    temperature: float
    top: list[tuple[str, float]]  # (token, probability), most likely first
    probs: torch.Tensor  # (V,) the whole distribution


@torch.no_grad()
def next_token(
    checkpoint: Checkpoint, prompt: str, temperatures: list[float], top_k: int = 10
) -> tuple[list[NextToken], bool]:
    """The distribution of the token after `prompt` at each temperature; (rows, was_cut)."""
    model = checkpoint.model.eval()
    encoded = encode_prompt(checkpoint.tokenizer, prompt, checkpoint.config.model.block_size)
    ids, was_cut = encoded.ids, encoded.was_cut
    logits, _ = model(torch.tensor([ids]))
    logits = logits[0, -1]  # (V,)
    rows = []
    for temperature in temperatures:
        probs = distribution(logits, temperature)
        values, indices = probs.topk(min(top_k, probs.numel()))
        top = [
            (checkpoint.tokenizer.token_text(i), p)
            for i, p in zip(indices.tolist(), values.tolist(), strict=True)
        ]
        rows.append(NextToken(temperature, top, probs))
    return rows, was_cut


def show(token: str) -> str:
    return "".join(VISIBLE.get(ch, ch) for ch in token)


def print_rows(rows: list[NextToken], out: TextIO) -> None:
    for row in rows:
        print(f"temperature {row.temperature:g}:", file=out)
        for rank, (token, p) in enumerate(row.top, 1):
            bar = "#" * round(40 * p)
            print(f"  {rank:>3}. {show(token)!s:<6} {p:7.2%}  {bar}", file=out)


def save_png(rows: list[NextToken], prompt: str, path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4 * len(rows), 4), layout="constrained")
    for axes, row in zip(figure.subplots(1, len(rows), squeeze=False)[0], rows, strict=True):
        tokens = [show(t) for t, _ in row.top]
        axes.barh(range(len(tokens)), [p for _, p in row.top], color="C0")
        axes.set_yticks(range(len(tokens)), tokens)
        axes.invert_yaxis()  # the most likely on top
        axes.set_xlim(0, 1)
        axes.set_xlabel("probability")
        axes.set_title(f"temperature {row.temperature:g}")
    figure.suptitle(f"the token after {show(prompt[-30:])!r}")
    save_figure(figure, path)
