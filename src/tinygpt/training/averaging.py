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

Tensors = tuple[Tensor, ...] | list[Tensor]  # what AveragedModel hands its averaging function


def moving_average(model: nn.Module, decay: float) -> AveragedModel:
    """An average of `model`'s weights that `update_parameters(model)` moves after each
    step. Until 1 / (1 - decay) updates it is their plain mean, and a moving average after:
    a decay of 0.999 from the start would keep most of the starting weights for a thousand
    steps, and the run's first evaluations would score them."""

    def fold_in(average: Tensors, current: Tensors, updates: Tensor | int) -> None:
        done = int(updates)  # n weights averaged so far: the next counts 1 / (n + 1)
        torch._foreach_lerp_(average, current, 1 - min(decay, done / (done + 1)))

    return AveragedModel(model, multi_avg_fn=fold_in)
