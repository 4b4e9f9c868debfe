"""A run's length from a time limit (`train.time_limit`): as many steps as fit in it.

The run times its steps and, every few steps, plans its length from the recent speed: the
steps done plus as many as the time left holds, at most `train.steps`. The learning-rate
schedule follows each plan without a jump (`LrSchedule.change_length`), so a machine that
slows down part-way (another program, a laptop's heat) shortens the run rather than making
it late, and the rate still ends at its floor. When the run ends, its length becomes the
config's `train.steps`. The clock counts the training steps, a compiled model's slow first
steps included, and not the evaluations. A checkpoint holds the plan and the time used, so
a resumed run goes on with them; the steps after it follow the clock again.
"""

from __future__ import annotations

from collections import deque

SETTLE_STEPS = 2  # a process's first steps (compiling, cold caches) say little about its speed
WINDOW = 50  # the speed is the mean time of this many recent steps
REPLAN_EVERY = 10  # steps between plans (in a torchrun group, each plan is a collective)
MARGIN = 0.98  # plan a little short of the limit: the last plan is made before the last steps


class TimeBudget:
    """How many steps fit in `limit_s` seconds of training, up to `max_steps`."""

    def __init__(self, limit_s: float, max_steps: int) -> None:
        self.limit_s, self.max_steps = limit_s, max_steps
        self.recent: deque[float] = deque(maxlen=WINDOW)
        self.timed = 0  # steps this process has timed

    def record(self, step_s: float) -> None:
        self.timed += 1
        if self.timed > SETTLE_STEPS:
            self.recent.append(step_s)

    def seconds_per_step(self) -> float | None:
        """The recent speed, or None before enough steps were timed."""
        return sum(self.recent) / len(self.recent) if self.recent else None

    def plan(self, step: int, trained_s: float, seconds_per_step: float) -> int:
        """The run's length, given `step` steps done in `trained_s` seconds: never fewer than
        are done, never more than `max_steps`."""
        left_s = max(0.0, self.limit_s * MARGIN - trained_s)
        fits = int(round(left_s / seconds_per_step, 6))  # 7.9 / 0.1 is 78.99999...: 79
        return max(step, min(self.max_steps, step + fits))
