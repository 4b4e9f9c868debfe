"""`tinygpt inspect`: the lecture notebook's data steps, printed for any corpus."""

from __future__ import annotations

from typing import TextIO

import numpy as np
import torch

from tinygpt.batches import check_length, random_batch
from tinygpt.config import DataConfig
from tinygpt.data import PreparedData, prepare

EXAMPLE_TEXT = "hii there"  # the lecture's encode/decode example
PREVIEW_CHARS = 500


def inspect_corpus(
    config: DataConfig, block_size: int, batch_size: int, seed: int, out: TextIO
) -> None:
    """Print each step from raw text to one training batch."""
    prepared = prepare(config)
    n_chars = len(prepared.train) + len(prepared.val)  # one token per character
    text = prepared.tokenizer.decode(prepared.train[:PREVIEW_CHARS].tolist())
    check_length(prepared.train, block_size, "train", option="--block-size")

    def section(title: str) -> None:
        print(f"\n== {title} ==", file=out)

    section("1. The corpus")
    print(f"{config.dataset}: {n_chars:,} characters", file=out)
    print(f"the first {len(text)} characters:", file=out)
    print(text, file=out)

    tokenizer = prepared.tokenizer
    section("2. The vocabulary: every distinct character, sorted")
    print(repr("".join(tokenizer.tokens())), file=out)
    print(f"vocab_size = {tokenizer.vocab_size}", file=out)

    section("3. Encode and decode")
    known = set(tokenizer.tokens())
    example = EXAMPLE_TEXT if all(c in known for c in EXAMPLE_TEXT) else text[:12]
    ids = tokenizer.encode(example)
    print(f"encode({example!r}) = {ids}", file=out)
    print(f"decode({ids}) = {tokenizer.decode(ids)!r}", file=out)

    data = torch.from_numpy(np.concatenate([prepared.train, prepared.val]).astype(np.int64))
    section("4. The whole corpus as a tensor")
    print(f"data.shape = {tuple(data.shape)}, data.dtype = {data.dtype}", file=out)
    print(f"data[:100] = {data[:100].tolist()}", file=out)

    section(f"5. Train/val split ({1 - config.val_fraction:.0%} / {config.val_fraction:.0%})")
    print(f"train: {len(prepared.train):,} tokens, val: {len(prepared.val):,} tokens", file=out)

    section(f"6. One block of block_size = {block_size}: {block_size} examples in one")
    block = prepared.train[: block_size + 1].astype(np.int64).tolist()
    print(f"train_data[:{block_size + 1}] = {block}", file=out)
    _print_pairs(block[:-1], block[1:], out)

    _print_batch(prepared, block_size, batch_size, seed, out)


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
