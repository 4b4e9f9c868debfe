"""Loss curves: a run's own (written next to its metrics), and several runs side by side."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tinygpt.errors import UserError
from tinygpt.rundir import RunDir
from tinygpt.viz import save_figure


def plot_losses(metrics_path: Path, png_path: Path) -> None:
    """Train and val loss against step (and the per-step training loss, faintly)."""
    records = [json.loads(line) for line in metrics_path.open(encoding="utf-8")]
    evals = [r for r in records if "val_loss" in r]
    steps = [r for r in records if "loss" in r]
    from matplotlib.figure import Figure  # half a second: only where a picture is drawn

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
    try:
        save_figure(figure, tmp)
        tmp.replace(png_path)
    finally:
        tmp.unlink(missing_ok=True)  # an interrupted save leaves no half-written file


@contextlib.contextmanager
def losses_plotted_meanwhile(metrics_path: Path, png_path: Path) -> Iterator[None]:
    """plot_losses in a child process while the body runs, waited for after it.

    The end of a run samples on one core while matplotlib is imported and draws on another:
    about a second less to wait on a 2-core CPU. Where the child cannot start or does not
    draw, the picture is drawn here after the body, as plot_losses always would (and its
    error, if any, is raised here). A body that raises (a stop during the sample) waits for
    the child: the run's picture is whole however its sample ends.
    """
    # -P: a module in the working directory cannot stand in for one the child imports
    command = [sys.executable, "-P", "-m", __name__, str(metrics_path), str(png_path)]
    try:
        child: subprocess.Popen[bytes] | None = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C at the terminal stops the body, not the picture
        )
    except OSError:
        child = None
    try:
        yield
    finally:
        drawn = child is not None and child.wait() == 0
    if not drawn:
        plot_losses(metrics_path, png_path)


def plot_runs(run_dirs: list[Path], png_path: Path, x: str = "step") -> dict[str, list[float]]:
    """The val loss of several runs in one picture, against step or training time (`x`
    "time"), each labelled with its directory's name; a run whose config has a reference
    val loss (the lecture's, for its presets) gets it as a star at its last point.
    Returns each curve's x values by label."""
    curves = {}
    from matplotlib.figure import Figure  # half a second: only where a picture is drawn

    figure = Figure(figsize=(8, 5))
    axes = figure.subplots()
    for i, run_dir in enumerate(run_dirs):
        evals = _evaluations(run_dir)
        xs = [r["step"] if x == "step" else r["elapsed_s"] for r in evals]
        color = f"C{i % 10}"
        axes.plot(xs, [r["val_loss"] for r in evals], marker=".", color=color, label=run_dir.name)
        curves[run_dir.name] = xs
        reference = RunDir(run_dir).read_config().train.reference_val_loss
        if reference > 0:
            axes.plot(
                [xs[-1]],
                [reference],
                marker="*",
                markersize=12,
                color=color,
                linestyle="none",
                label=f"{run_dir.name}: reported {reference:g}",
            )
    axes.set_xlabel("step" if x == "step" else "training time (s)")
    axes.set_ylabel("val loss (nats per token)")
    axes.grid(alpha=0.3)
    axes.legend()
    save_figure(figure, png_path)
    return curves


def _evaluations(run_dir: Path) -> list[dict]:
    """A run's evaluation lines; a missing or empty log is the user's to hear about."""
    paths = RunDir(run_dir)
    if not paths.exists():
        raise UserError(f"{run_dir} is not a tinygpt run directory")
    try:
        records = [
            json.loads(line) for line in paths.metrics.open(encoding="utf-8") if line.strip()
        ]
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {paths.metrics}: {exc}") from None
    evals = [r for r in records if "val_loss" in r]
    if not evals:
        raise UserError(f"{run_dir} has no evaluation yet: nothing to plot")
    return evals


if __name__ == "__main__":  # the child of losses_plotted_meanwhile
    plot_losses(Path(sys.argv[1]), Path(sys.argv[2]))
