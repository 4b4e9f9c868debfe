"""A run's length from a time limit (`train.time_limit`): as many steps as fit in it.

The run times its steps and plans its length from the recent speed, at most `train.steps`.
The plan may change only while no learning rate depends on it (wsd: until its decay starts;
cosine: until its warmup ends; constant: to the end); then the training engine fixes it as
the config's `train.steps`, which every checkpoint carries, so a resumed run keeps the plan
and ends bit for bit where the uninterrupted run ends. The clock counts the training steps,
a compiled model's slow first steps included, and not the evaluations.
"""

from __future__ import annotations

from collections import deque

from tinygpt.config import OptimConfig
from tinygpt.optim import length_matters_from

SETTLE_STEPS = 2  # a process's first steps (compiling, cold caches) say little about its speed
WINDOW = 50  # the speed is the mean time of this many recent steps
REPLAN_EVERY = 10  # steps between plans (in a torchrun group, each plan is a collective)
MARGIN = 0.97  # plan a little short: the machine may slow down once the plan is fixed


class TimeBudget:
    """How many steps fit in `limit_s` seconds of training, up to `max_steps`."""

    def __init__(self, limit_s: float, max_steps: int, optim: OptimConfig) -> None:
        self.limit_s, self.max_steps, self.optim = limit_s, max_steps, optim
        self.planned = max_steps  # until the first measurement
        self.recent: deque[float] = deque(maxlen=WINDOW)
        self.timed = 0  # steps this process has timed

    def is_open(self, step: int) -> bool:
        """Whether the plan may still change before optimizer step `step` (0-based)."""
        return step < length_matters_from(self.optim, self.planned)

    def record(self, step_s: float) -> None:
        self.timed += 1
        if self.timed > SETTLE_STEPS:
            self.recent.append(step_s)

    def seconds_per_step(self) -> float | None:
        """The recent speed, or None before enough steps were timed."""
        return sum(self.recent) / len(self.recent) if self.recent else None

    def plan(self, step: int, trained_s: float, seconds_per_step: float) -> int:
        """The length that fits, given `step` steps done in `trained_s` seconds; never one
        whose schedule would already have left the part that does not depend on it."""
        left_s = max(0.0, self.limit_s * MARGIN - trained_s)
        fits = int(round(left_s / seconds_per_step, 6))  # 7.9 / 0.1 is 78.99999...: 79
        planned = min(self.max_steps, step + fits)
        while planned < self.max_steps and length_matters_from(self.optim, planned) < step:
            planned += 1  # too late for so short a plan: the shortest one still open
        self.planned = max(planned, step)
        return self.planned
