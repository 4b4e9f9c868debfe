"""Evaluation: mean loss over fixed batches per split or a whole split; bits per byte."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from tinygpt.checkpoint import Checkpoint
from tinygpt.data.batches import batch_at, eval_batches
from tinygpt.errors import UserError
from tinygpt.runtime import SINGLE_PROCESS, Distributed, all_mean, autocast_dtype


class EvaluationStopped(Exception):
    """A stop was asked for during an evaluation, which was abandoned (it changes nothing)."""


def never() -> bool:
    return False


def _check(stop: Callable[[], bool]) -> None:
    if stop():
        raise EvaluationStopped


# Small models' batches are too small to keep a CPU busy: evaluation scores several in one
# forward pass, up to this many tokens, and fewer where the logits would grow past the second
# bound (a large vocabulary). More tokens a pass outgrow the CPU's caches: on two cores,
# 4k tokens a pass score cpu-fast's, cpu-5min's and cpu-baby's models 1.3-2.3x faster than
# 16k, and lecture-notebook's 6% slower (benchmarks/RESULTS.md, "Tokens per evaluation pass").
EVAL_TOKENS_PER_FORWARD = 1 << 12
EVAL_LOGITS_PER_FORWARD = 1 << 22


def rows_per_forward(block_size: int, vocab_size: int, *, at_least: int) -> int:
    """How many windows of `block_size` tokens one evaluation forward pass scores."""
    tokens = min(EVAL_TOKENS_PER_FORWARD, EVAL_LOGITS_PER_FORWARD // vocab_size)
    return max(at_least, tokens // block_size)


def stacked(
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]], per_stack: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """Consecutive (x, y) batches concatenated `per_stack` at a time, with how many each
    stack holds: the mean loss of a stack of equal batches is the mean of their losses."""
    while group := list(itertools.islice(batches, per_stack)):
        xs, ys = zip(*group, strict=True)
        yield torch.cat(xs), torch.cat(ys), len(group)


@torch.no_grad()
def estimate_loss(
    model: nn.Module,
    splits: dict[str, np.ndarray],
    *,
    n_batches: int,
    batch_size: int,
    block_size: int,
    seed: int,
    device: torch.device,
    group: Distributed = SINGLE_PROCESS,
    stop: Callable[[], bool] = never,
    batches_per_forward: int = 1,
) -> dict[str, float]:
    """{'train_loss': ..., 'val_loss': ...} over the same seeded batches on every call.

    In a torchrun group each rank scores its slice of every batch and the means are averaged
    over the group: the same figure as one process scoring whole batches. `stop` is asked
    before every forward pass (the same answer on every rank): True raises
    EvaluationStopped. `batches_per_forward` changes the speed, not the figure (but for
    rounding in the last digits).
    """
    was_training = model.training
    model.eval()
    losses = {}
    for split, data in splits.items():
        total = 0.0
        batches = eval_batches(
            data, split, n_batches, batch_size, block_size, seed=seed, group=group
        )
        for x, y, count in stacked(batches, batches_per_forward):
            _check(stop)
            _, loss = model(x.to(device), y.to(device))
            total += loss.item() * count
        losses[f"{split}_loss"] = all_mean(total / n_batches, group, device)
    model.train(was_training)
    return losses


def describe_score(loss: float, bits_per_byte: float) -> str:
    return f"loss {loss:.4f}, perplexity {math.exp(loss):.2f}, {bits_per_byte:.4f} bits per byte"


def bits_per_token(loss: float) -> float:
    """Cross-entropy in nats -> bits."""
    return loss / math.log(2)


def bits_per_byte(loss: float, tokens_per_byte: float) -> float:
    """A loss per token (nats) as bits per byte of UTF-8 text: the figure that compares
    models whatever their tokenizer (one that packs more bytes into a token has a higher
    loss per token for the same model quality). For ASCII text and a char tokenizer it is
    bits per character."""
    return bits_per_token(loss) * tokens_per_byte


def whole_split_windows(n_tokens: int, block_size: int) -> list[tuple[int, int]]:
    """(start, length) of the windows that predict every token of a split once: side by side
    from its start, the last one shorter (targets are tokens 1..n-1; token 0 has no context)."""
    predicted = n_tokens - 1
    starts = range(0, predicted, block_size)
    return [(start, min(block_size, predicted - start)) for start in starts]


@torch.no_grad()
def split_loss(
    model: nn.Module,
    data: np.ndarray,
    block_size: int,
    batch_size: int,
    device: torch.device,
    *,
    group: Distributed = SINGLE_PROCESS,
    progress: bool = False,
    stop: Callable[[], bool] = never,
) -> float:
    """Mean loss over a whole split, every token predicted once (whole_split_windows).

    Exact where a sampled estimate is noisy: use it to compare runs, not to watch one. In a
    torchrun group each rank scores every world_size-th batch; all ranks go through the same
    number of rounds, so that `stop` (as in estimate_loss) is asked together.
    """
    was_training = model.training
    model.eval()
    windows = whole_split_windows(len(data), block_size)
    full = [start for start, length in windows if length == block_size]
    batches = [full[i : i + batch_size] for i in range(0, len(full), batch_size)]
    batches += [[start] for start, length in windows if length < block_size]  # the tail
    rounds = math.ceil(len(batches) / group.world_size)
    total, count = 0.0, 0
    for round_ in tqdm(
        range(rounds), desc="eval", unit="batch", disable=None if progress else True
    ):
        _check(stop)
        index = round_ * group.world_size + group.rank
        if index >= len(batches):
            continue  # this rank's share is done; the others finish theirs
        starts = batches[index]
        length = min(block_size, len(data) - 1 - starts[0])
        x, y = batch_at(data, torch.tensor(starts), length)
        _, loss = model(x.to(device), y.to(device))
        total += loss.item() * y.numel()
        count += y.numel()
    model.train(was_training)
    return all_mean(total, group, device) / all_mean(count, group, device)


def spaced_windows(n_tokens: int, block_size: int, n_windows: int) -> list[int]:
    """Starts of `n_windows` full windows spread evenly over a split, from its first window
    to its last (all of them, side by side, when it has no more)."""
    n_full = (n_tokens - 1) // block_size
    if n_windows >= n_full:
        return [i * block_size for i in range(n_full)]
    if n_windows == 1:
        return [0]
    return [round(i * (n_full - 1) / (n_windows - 1)) * block_size for i in range(n_windows)]


@dataclass(frozen=True)
class SampledLoss:
    """A split's loss estimated from evenly spaced windows, with its standard error."""

    loss: float
    stderr: float  # of the mean, from the spread of the batches' losses
    tokens: int  # predicted


@torch.no_grad()
def sampled_split_loss(
    model: nn.Module,
    data: np.ndarray,
    block_size: int,
    batch_size: int,
    device: torch.device,
    *,
    max_tokens: int,
    group: Distributed = SINGLE_PROCESS,
    stop: Callable[[], bool] = never,
) -> SampledLoss:
    """The loss over at most `max_tokens` predicted tokens of a large split: whole batches
    of evenly spaced windows (at least two batches), where `split_loss` reads every token.
    Each batch is a sample of the split; the spread of their losses gives the standard
    error. In a torchrun group the ranks share the batches as in split_loss."""
    n_batches = max(2, max_tokens // (block_size * batch_size))
    starts = spaced_windows(len(data), block_size, n_batches * batch_size)
    batches = [starts[i : i + batch_size] for i in range(0, len(starts), batch_size)]
    was_training = model.training
    model.eval()
    total = squares = 0.0
    for round_ in range(math.ceil(len(batches) / group.world_size)):
        _check(stop)
        index = round_ * group.world_size + group.rank
        if index < len(batches):
            x, y = batch_at(data, torch.tensor(batches[index]), block_size)
            loss = model(x.to(device), y.to(device))[1].item()
            total, squares = total + loss, squares + loss * loss
    model.train(was_training)
    n = len(batches)
    mean = all_mean(total, group, device) * group.world_size / n
    mean_square = all_mean(squares, group, device) * group.world_size / n
    variance = max(0.0, (mean_square - mean * mean) * n / (n - 1)) if n > 1 else math.nan
    return SampledLoss(mean, math.sqrt(variance / n), len(starts) * block_size)


@dataclass
class Score:
    """How well a model predicts a text: every token of it, once."""

    dataset: str
    split: str  # val, or all: train and val, the whole text
    tokens: int  # in the split (each but the first is predicted once)
    text_bytes: int
    loss: float  # mean cross-entropy, nats per token

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def bits_per_byte(self) -> float:
        return bits_per_byte(self.loss, self.tokens / max(self.text_bytes, 1))

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        return {**values, "perplexity": self.perplexity, "bits_per_byte": self.bits_per_byte}

    def describe(self) -> str:
        return describe_score(self.loss, self.bits_per_byte)


def score_checkpoint(
    checkpoint: Checkpoint,
    dataset: str,
    split: str,
    *,
    device: torch.device,
    batch_size: int | None = None,
    progress: bool = False,
) -> Score:
    """Score a trained model on a corpus encoded with its own tokenizer (the run's corpus
    gives the figure its training reported as `whole_val_loss`)."""
    from tinygpt.data.corpora import prepare

    config = checkpoint.config
    data = prepare(dataclasses.replace(config.data, dataset=dataset), checkpoint.tokenizer)
    tokens = data.val if split == "val" else np.concatenate((data.train, data.val))
    text_bytes = data.split_bytes["val"] + (data.split_bytes["train"] if split == "all" else 0)
    if len(tokens) < 2:
        raise UserError(f"the {split} split of {dataset} has {len(tokens)} tokens: none to predict")
    model = checkpoint.model.to(device)
    dtype = autocast_dtype(config.train.dtype, device)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        loss = split_loss(
            model,
            tokens,
            config.model.block_size,
            batch_size or config.train.batch_size,
            device,
            progress=progress,
        )
    return Score(dataset, split, len(tokens), text_bytes, loss)
