"""The notebook's cells, printed: `tinygpt inspect` (the data steps, for any corpus) and
`tinygpt trick` (the mathematical trick in self-attention, with the notebook's values)."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tinygpt.config import DataConfig, ModelConfig, fit_to_vocabulary
from tinygpt.data.batches import check_length, random_batch
from tinygpt.data.corpora import PreparedData, prepare
from tinygpt.errors import UserError
from tinygpt.models import build_model, print_parameter_table
from tinygpt.tokenizers import Tokenizer
from tinygpt.viz import save_figure

EXAMPLE_TEXT = "hii there"  # the lecture's encode/decode example
SPLIT_EXAMPLE = "Hello NanoGPT"  # the lecture's example for subword tokenizers
PREVIEW_CHARS = 500


def inspect_corpus(
    config: DataConfig,
    out: TextIO,
    *,
    block_size: int = 8,
    batch_size: int = 4,
    seed: int = 1337,
    example: str | None = None,
    model: ModelConfig | None = None,
) -> None:
    """Print each step from raw text to one training batch (and a model's parameters).

    `example` is the text to encode and decode (default: the lecture's "hii there").
    """
    prepared = prepare(config)
    tokenizer = prepared.tokenizer
    text = tokenizer.decode(prepared.train[:PREVIEW_CHARS].tolist())[:PREVIEW_CHARS]
    check_length(prepared.train, block_size, "train", option="--block-size")
    if example is None:
        example = EXAMPLE_TEXT if _encodes(tokenizer, EXAMPLE_TEXT) else text[:12]
    ids = tokenizer.encode(example)  # a character outside the vocabulary: said before any print
    n_tokens = len(prepared.train) + len(prepared.val)
    n_bytes = sum(prepared.split_bytes.values())

    def section(title: str) -> None:
        print(f"\n== {title} ==", file=out)

    section("1. The corpus")
    print(f"{config.dataset}: {prepared.characters:,} characters, {n_bytes:,} bytes", file=out)
    print(f"the first {len(text)} characters:", file=out)
    print(text, file=out)

    tokens = tokenizer.tokens()
    if all(len(token) == 1 for token in tokens):  # the lecture's: one character per token
        section("2. The vocabulary: every distinct character, sorted")
        print(repr("".join(tokens)), file=out)
    else:
        section(f"2. The vocabulary: {tokenizer.kind} tokens")
        _print_vocabulary(tokenizer, tokens, out)
    print(f"vocab_size = {tokenizer.vocab_size}", file=out)

    section("3. Encode and decode")
    print(f"encode({example!r}) = {ids}", file=out)
    print(f"decode({ids}) = {tokenizer.decode(ids)!r}", file=out)
    _print_split(tokenizer, SPLIT_EXAMPLE, out)
    print(
        f"compression on the corpus: {prepared.characters / n_tokens:.2f} characters and "
        f"{n_bytes / n_tokens:.2f} bytes per token",
        file=out,
    )

    section("4. The whole corpus as a tensor")
    head = torch.from_numpy(prepared.train[:100].astype(np.int64))
    print(f"data.shape = ({n_tokens},), data.dtype = {head.dtype}", file=out)
    print(f"data[:100] = {head.tolist()}", file=out)

    section(f"5. Train/val split ({1 - config.val_fraction:.0%} / {config.val_fraction:.0%})")
    print(f"train: {len(prepared.train):,} tokens, val: {len(prepared.val):,} tokens", file=out)

    section(f"6. One block of block_size = {block_size}: {block_size} examples in one")
    block = prepared.train[: block_size + 1].astype(np.int64).tolist()
    print(f"train_data[:{block_size + 1}] = {block}", file=out)
    _print_pairs(block[:-1], block[1:], out)

    _print_batch(prepared, block_size, batch_size, seed, out)
    if model is not None:
        section(f"8. The model: {model.arch}, its parameters part by part")
        model = fit_to_vocabulary(model, tokenizer.vocab_size)  # the model training would build
        print_parameter_table(build_model(model, tokenizer.vocab_size), out)


def _encodes(tokenizer: Tokenizer, text: str) -> bool:
    try:
        tokenizer.encode(text)
    except UserError:
        return False
    return True


def _print_split(tokenizer: Tokenizer, text: str, out: TextIO) -> None:
    """How a text splits into tokens: the text of each."""
    if not _encodes(tokenizer, text):
        print(f"{text!r} cannot be encoded: a character is not in the vocabulary", file=out)
        return
    pieces = [tokenizer.token_text(i) for i in tokenizer.encode(text)]
    print(f"{text!r} splits into {len(pieces)} tokens: {pieces}", file=out)


def _print_vocabulary(tokenizer: Tokenizer, tokens: list[str], out: TextIO) -> None:
    """The first tokens and the last ones (for bpe, the last merges learned)."""
    shown = 12
    print(f"first: {tokens[:shown]}", file=out)
    print(f"last: {tokens[-shown:]}", file=out)
    if tokenizer.eot_id is not None:
        print(f"end of text: {tokenizer.eot_id} = {tokens[tokenizer.eot_id]!r}", file=out)


def _print_batch(
    prepared: PreparedData, block_size: int, batch_size: int, seed: int, out: TextIO
) -> None:
    generator = torch.Generator().manual_seed(seed)
    x, y = random_batch(prepared.train, batch_size, block_size, generator)
    print(f"\n== 7. One batch (seed {seed}): {batch_size} random blocks at once ==", file=out)
    print(f"inputs: shape {tuple(x.shape)}\n{x}", file=out)
    print(f"targets: shape {tuple(y.shape)}\n{y}", file=out)
    for b in range(batch_size):
        _print_pairs(x[b].tolist(), y[b].tolist(), out)


def _print_pairs(inputs: list[int], targets: list[int], out: TextIO) -> None:
    for t in range(len(inputs)):
        print(f"when input is {inputs[: t + 1]} the target: {targets[t]}", file=out)


# --- the mathematical trick in self-attention --------------------------------------------


def print_trick(out: TextIO, png_dir: Path | None = None) -> None:
    """The notebook's cells on the trick behind self-attention, seeded as the notebook is,
    so the printed values are the notebook's; `png_dir` also gets the weight matrices of
    versions 2, 3 and 4 as heat maps."""

    def section(title: str) -> None:
        print(f"\n== {title} ==", file=out)

    section("A toy example: a lower-triangular matrix averages the rows above")
    torch.manual_seed(42)
    a = torch.tril(torch.ones(3, 3))
    a = a / torch.sum(a, 1, keepdim=True)  # each row sums to 1
    b = torch.randint(0, 10, (3, 2)).float()
    print(f"a =\n{a}\nb =\n{b}\nc = a @ b =\n{a @ b}", file=out)

    torch.manual_seed(1337)
    B, T, C = 4, 8, 2
    x = torch.randn(B, T, C)
    section("Version 1: for every t, the mean of x[b, :t+1] (a loop)")
    xbow = torch.zeros((B, T, C))  # "bag of words": the average of everything so far
    for i in range(B):
        for t in range(T):
            xbow[i, t] = torch.mean(x[i, : t + 1], 0)
    print(f"x[0] =\n{x[0]}\nxbow[0] =\n{xbow[0]}", file=out)

    section("Version 2: the same as one matrix product, wei @ x")
    wei2 = torch.tril(torch.ones(T, T))
    wei2 = wei2 / wei2.sum(1, keepdim=True)
    _print_same(xbow, wei2 @ x, "xbow2", out)

    section("Version 3: softmax over -inf where the future is")
    tril = torch.tril(torch.ones(T, T))
    wei3 = torch.zeros((T, T)).masked_fill(tril == 0, float("-inf"))
    wei3 = F.softmax(wei3, dim=-1)  # the same averages; now the zeros can be learned
    _print_same(xbow, wei3 @ x, "xbow3", out)

    wei4, variances = _self_attention_head(out)
    section("Scaled attention: q @ k^T * head_size**-0.5 keeps the variance near 1")
    k_var, q_var, wei_var = variances
    print(f"k.var() = {k_var:.4f}, q.var() = {q_var:.4f}, wei.var() = {wei_var:.4f}", file=out)
    scores = torch.tensor([0.1, -0.2, 0.3, -0.2, 0.5])
    print(f"softmax({_rounded(scores)}) = {_rounded(F.softmax(scores, dim=-1))}", file=out)
    sharp = F.softmax(scores * 8, dim=-1)
    print(f"softmax(the same * 8) = {_rounded(sharp)}: large scores sharpen to one-hot", file=out)

    _print_layernorm(out)
    if png_dir is not None:
        _save_heat_maps({"version2": wei2, "version3": wei3, "version4": wei4}, png_dir, out)


def _print_same(expected: torch.Tensor, actual: torch.Tensor, name: str, out: TextIO) -> None:
    difference = (expected - actual).abs().max().item()
    same = torch.allclose(expected, actual, atol=1e-7)
    print(
        f"torch.allclose(xbow, {name}, atol=1e-7) = {same} (largest difference {difference:.1e}: "
        "float32 rounding, the sums are taken in another order)",
        file=out,
    )


def _self_attention_head(out: TextIO) -> tuple[torch.Tensor, tuple[float, float, float]]:
    """Version 4: one head of self-attention, then the scaled scores' variances (the
    notebook's next cell draws from the same random stream, so it runs here)."""
    print("\n== Version 4: self-attention, data-dependent weights ==", file=out)
    torch.manual_seed(1337)
    B, T, C = 4, 8, 32
    x = torch.randn(B, T, C)
    head_size = 16
    key = nn.Linear(C, head_size, bias=False)
    query = nn.Linear(C, head_size, bias=False)
    value = nn.Linear(C, head_size, bias=False)
    with torch.no_grad():
        k, q = key(x), query(x)  # (B, T, 16) each
        wei = q @ k.transpose(-2, -1)  # (B, T, 16) @ (B, 16, T) -> (B, T, T)
        tril = torch.tril(torch.ones(T, T))
        wei = F.softmax(wei.masked_fill(tril == 0, float("-inf")), dim=-1)
        out_v = wei @ value(x)  # (B, T, 16)
    print(f"out.shape = {tuple(out_v.shape)}\nwei[0] =\n{wei[0]}", file=out)
    k = torch.randn(B, T, head_size)
    q = torch.randn(B, T, head_size)
    scaled = q @ k.transpose(-2, -1) * head_size**-0.5
    return wei[0], (k.var().item(), q.var().item(), scaled.var().item())


def _print_layernorm(out: TextIO) -> None:
    """The notebook's LayerNorm1d: normalise each row (one example's features), not each
    column as batch norm does."""
    print("\n== LayerNorm: every row gets mean 0 and standard deviation 1 ==", file=out)
    torch.manual_seed(1337)
    x = torch.randn(32, 100)  # a batch of 32 vectors of 100 features
    mean, var = x.mean(1, keepdim=True), x.var(1, keepdim=True)
    x = (x - mean) / torch.sqrt(var + 1e-5)  # gamma 1 and beta 0, as at initialisation
    column, row = x[:, 0], x[0, :]
    print(
        f"one feature across the batch: mean {column.mean():.4f}, std {column.std():.4f}", file=out
    )
    print(f"one row across its features: mean {row.mean():.4f}, std {row.std():.4f}", file=out)


def _rounded(t: torch.Tensor) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in t.tolist()) + "]"


def _save_heat_maps(matrices: dict[str, torch.Tensor], folder: Path, out: TextIO) -> None:
    from matplotlib.figure import Figure

    folder.mkdir(parents=True, exist_ok=True)
    for name, wei in matrices.items():
        figure = Figure(figsize=(4, 4))
        axes = figure.subplots()
        image = axes.imshow(wei.numpy(), cmap="viridis", vmin=0, vmax=1)
        axes.set_title(f"wei, {name}")
        axes.set_xlabel("attends to position")
        axes.set_ylabel("position")
        figure.colorbar(image, ax=axes, fraction=0.046)
        path = folder / f"trick-{name}.png"
        save_figure(figure, path)
        print(f"wrote {path}", file=out)
