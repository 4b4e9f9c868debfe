"""Plots of a run: the loss curve, written next to its metrics."""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.figure import Figure


def plot_losses(metrics_path: Path, png_path: Path) -> None:
    """Train and val loss against step (and the per-step training loss, faintly)."""
    records = [json.loads(line) for line in metrics_path.open(encoding="utf-8")]
    evals = [r for r in records if "val_loss" in r]
    steps = [r for r in records if "loss" in r]
    figure = Figure(figsize=(8, 5))
    axes = figure.subplots()
    if steps:
        axes.plot(
            [r["step"] for r in steps],
            [r["loss"] for r in steps],
            color="0.75",
            linewidth=0.8,
            label="training batch loss",
        )
    axes.plot(
        [r["step"] for r in evals], [r["train_loss"] for r in evals], marker=".", label="train"
    )
    axes.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], marker=".", label="val")
    axes.set_xlabel("step")
    axes.set_ylabel("loss (nats per token)")
    axes.set_title(metrics_path.parent.name)
    axes.grid(alpha=0.3)
    axes.legend()
    tmp = png_path.with_suffix(".tmp.png")
    figure.savefig(tmp, dpi=100)
    tmp.replace(png_path)
