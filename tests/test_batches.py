"""Batches: shapes, the one-token shift, seeds, fixed evaluation batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tinygpt.config import DataConfig
from tinygpt.data.batches import check_length, eval_batches, random_batch
from tinygpt.data.corpora import prepare
from tinygpt.errors import UserError

DATA = np.arange(1000, dtype=np.uint16) % 65


def test_shapes_and_one_token_shift() -> None:
    generator = torch.Generator().manual_seed(0)
    x, y = random_batch(DATA, batch_size=6, block_size=10, generator=generator)
    assert x.shape == y.shape == (6, 10) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    for row_x, row_y in zip(x, y, strict=True):
        start = int(np.flatnonzero(row_x[0].item() == DATA)[0])  # DATA repeats with period 65
        window = torch.from_numpy(DATA[start : start + 11].astype(np.int64))
        assert torch.equal(row_x, window[:-1]) and torch.equal(row_y, window[1:])


def test_same_seed_same_batches_other_seed_other_batches() -> None:
    def draw(seed: int) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        return [random_batch(DATA, 4, 8, generator)[0] for _ in range(3)]

    assert all(torch.equal(a, b) for a, b in zip(draw(1), draw(1), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(draw(1), draw(2), strict=True))


def test_windows_reach_the_last_token_and_never_past_it() -> None:
    data = np.arange(12, dtype=np.uint16)
    generator = torch.Generator().manual_seed(0)
    seen_last = False
    for _ in range(200):
        _, y = random_batch(data, 4, 8, generator)
        assert int(y.max()) <= 11
        seen_last |= bool((y[:, -1] == 11).any())
    assert seen_last


def test_notebook_batch_for_seed_1337(shakespeare) -> None:
    prepared = prepare(DataConfig())
    x, y = random_batch(prepared.train, 4, 8, torch.Generator().manual_seed(1337))
    assert x[0].tolist() == [24, 43, 58, 5, 57, 1, 46, 43]
    assert y[0].tolist() == [43, 58, 5, 57, 1, 46, 43, 39]
    assert x[3].tolist() == [25, 17, 27, 10, 0, 21, 1, 54]


def test_evaluation_batches_are_fixed_and_differ_per_split() -> None:
    first = list(eval_batches(DATA, "val", 3, 4, 8, seed=7))
    second = list(eval_batches(DATA, "val", 3, 4, 8, seed=7))
    train = list(eval_batches(DATA, "train", 3, 4, 8, seed=7))
    assert len(first) == 3
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, second, strict=True))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, train, strict=True))


def test_split_shorter_than_a_block_is_a_clear_error() -> None:
    check_length(np.zeros(9), 8, "val")
    with pytest.raises(UserError, match=r"val split has 8 tokens, fewer than block_size \+ 1 = 9"):
        check_length(np.zeros(8), 8, "val")
