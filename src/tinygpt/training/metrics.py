"""Metrics of a run: metrics.jsonl lines (and the same figures for TensorBoard, where asked
for), and the throughput they report."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from tinygpt.errors import UserError


def require_tensorboard() -> type:
    """TensorBoard's SummaryWriter, or one clear line if the extra is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(
            "--train.tensorboard needs TensorBoard: pip install 'tinygpt[tensorboard]'"
        ) from None
    return SummaryWriter


def tensorboard_writer(folder: str) -> Any:
    return require_tensorboard()(log_dir=folder)


class MetricsLog:
    """metrics.jsonl: one JSON object per line, each with `step` and `elapsed_s`; with a
    TensorBoard folder, every figure also as a scalar of that name at that step."""

    def __init__(
        self,
        path: Path,
        elapsed_before: float = 0.0,
        enabled: bool = True,
        tensorboard: str = "",
    ) -> None:
        self.file = path.open("a", encoding="utf-8") if enabled else None  # rank 0 writes
        self.board = tensorboard_writer(tensorboard) if enabled and tensorboard else None
        self.start = time.perf_counter() - elapsed_before

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def write(self, step: int, **values: float) -> None:
        if self.file is None:
            return
        record = {"step": step, "elapsed_s": round(self.elapsed(), 4), **values}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.board is not None:
            for name, value in values.items():
                self.board.add_scalar(name, value, step)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.board is not None:
            self.board.close()


class Throughput:
    """Tokens per second over the steps since the last restart (evaluation left out)."""

    def __init__(self, tokens_per_step: int) -> None:
        self.tokens_per_step = tokens_per_step
        self.restart()

    def restart(self) -> None:
        self.start, self.steps = time.perf_counter(), 0

    def rate(self) -> float:
        return self.steps * self.tokens_per_step / (time.perf_counter() - self.start)


def drop_metrics_after(path: Path, step: int) -> None:
    """Lines logged after the checkpoint we resume from will be logged again."""
    if not path.exists():
        return
    kept = [line for line in path.open(encoding="utf-8") if _logged_step(line) <= step]
    path.write_text("".join(kept), encoding="utf-8")


def _logged_step(line: str) -> float:
    """The step of a metrics line; a line cut short by a crash counts as past any step."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf
