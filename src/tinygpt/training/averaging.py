"""An exponential moving average of the weights (`optim.ema`): the model a run scores and saves.

After every step the average moves a fraction (1 - decay) of the way to the weights the
optimizer left: at 0.999 it holds about the last thousand steps. Late in a run the weights
still wander around the low ground the learning rate lets them reach; their average sits
nearer its middle and predicts held-out text better than the last step's weights
(benchmarks/cpu-fast-notes.md, entry AB). The optimizer goes on from its own weights, which
a checkpoint keeps in its training state for exact resumption; the checkpoint's model is
the average. torch's `AveragedModel` keeps the average (a copy of the model; its buffers
follow the model's).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

WARMUP = 10  # the decay is at most (1 + n) / (WARMUP + n) after n updates


def moving_average(model: nn.Module, decay: float) -> AveragedModel:
    """An average of `model`'s weights that `update_parameters(model)` moves after each
    step. Its decay starts low and rises to `decay`, so that the first steps' average is not
    mostly the starting weights (which a decay of 0.999 would keep for thousands of steps)."""

    def fold_in(average: list[Tensor], current: list[Tensor], updates: Tensor | int) -> None:
        done = int(updates)
        torch._foreach_lerp_(average, current, 1 - min(decay, (1 + done) / (WARMUP + done)))

    return AveragedModel(model, multi_avg_fn=fold_in)  # type: ignore[arg-type]
