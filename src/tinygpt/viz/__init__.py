"""Seeing inside a model: attention maps (attention), next-token probabilities (probs), loss
curves (plot), and the lecture notebook's cells printed by `inspect` and `trick` (notebook)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def save_figure(figure: Any, path: Path, dpi: int = 100) -> None:
    """Write a matplotlib figure as a PNG grown to hold every title and label, with a margin:
    a long title or a run name never runs off the picture, whatever the model's size."""
    figure.savefig(path, dpi=dpi, bbox_inches="tight", pad_inches=0.15)
