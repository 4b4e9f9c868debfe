"""Runs: start one in its directory, continue it from a checkpoint, and finish it.

Everything a run needs is checked (corpus, splits, device) before its run directory is
created, so a mistake leaves nothing behind. A run resumed from a checkpoint continues with
the same weights, optimizer state, learning rate and batch stream, so on a CPU it ends bit
for bit where an uninterrupted run ends.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Any, TextIO

import safetensors.torch

from tinygpt.checkpoint import (
    clean_checkpoints,
    find_checkpoint,
    is_run_dir,
    list_checkpoints,
    load_train_state,
    read_meta,
    write_run_config,
)
from tinygpt.config import RunConfig, SampleConfig
from tinygpt.errors import UserError
from tinygpt.faults import stop_if_requested
from tinygpt.generate import stream_text
from tinygpt.metrics import drop_metrics_after
from tinygpt.models import count_parameters
from tinygpt.plot import plot_losses
from tinygpt.runtime import barrier
from tinygpt.train import Session, fit, restore_train_state, setup


def check_run_dir(run_dir: Path, overwrite: bool) -> None:
    """A new run needs an empty place; --overwrite replaces an earlier run, nothing else."""
    if not run_dir.exists() or (run_dir.is_dir() and not any(run_dir.iterdir())):
        return
    if not is_run_dir(run_dir):
        raise UserError(
            f"{run_dir} exists and is not a tinygpt run directory; choose another --out"
        )
    if not overwrite:
        raise UserError(
            f"run directory {run_dir} already exists; resume it with --resume {run_dir}, "
            "choose another --out or pass --overwrite"
        )


def train(
    config: RunConfig,
    run_dir: Path,
    overwrite: bool = False,
    out: TextIO | None = None,
    until: int | None = None,
) -> dict[str, float]:
    """Train a model from scratch into `run_dir`; return the last evaluation.

    `until` stops after that many steps (as an interruption would); `resume` goes on.
    """
    session = setup(config)
    check_run_dir(run_dir, overwrite)
    stop_if_requested()  # a Ctrl-C while torch loaded or the data was prepared: write nothing
    barrier(session.group)  # every rank has looked before rank 0 makes the directory
    if session.group.is_main:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        write_run_config(run_dir, config)
    barrier(session.group)
    return run(session, run_dir, out, until)


EARLIER_METRICS = "metrics-earlier.jsonl"  # what a run logged before it had to start again


def restart(
    config: RunConfig, run_dir: Path, out: TextIO | None, until: int | None
) -> dict[str, float]:
    """Start a run that has no complete checkpoint again from step 0, in its own directory,
    keeping what it logged so far in metrics-earlier.jsonl."""
    session = setup(config)
    stop_if_requested()
    barrier(session.group)
    if session.group.is_main:
        metrics = run_dir / "metrics.jsonl"
        print(
            f"{run_dir} has no complete checkpoint to resume from; starting it again from "
            f"step 0" + (f" (its earlier metrics are kept in {EARLIER_METRICS})"
                         if metrics.exists() else ""),
            file=out or sys.stdout,
        )  # fmt: skip
        if metrics.exists():
            with (run_dir / EARLIER_METRICS).open("a", encoding="utf-8") as kept:
                kept.write(metrics.read_text(encoding="utf-8"))
            metrics.unlink()
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # leftovers of a failed save
        write_run_config(run_dir, config)
    barrier(session.group)
    return run(session, run_dir, out, until)


def is_finished(run_dir: Path) -> bool:
    """Whether the newest complete checkpoint of a run is its last step."""
    if not is_run_dir(run_dir) or not list_checkpoints(run_dir):
        return False
    _, meta = _newest_checkpoint(run_dir)
    return meta["step"] >= meta["config"]["train"]["steps"]


def _newest_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The newest complete checkpoint folder and its meta.json."""
    folder = find_checkpoint(run_dir)
    return folder, read_meta(folder)


def resume(
    run_dir: Path, steps: int | None = None, out: TextIO | None = None, until: int | None = None
) -> dict[str, float]:
    """Continue a run from its newest complete checkpoint (optionally to `steps` in all).

    Leftovers of an interrupted save are ignored and then removed; a run stopped before its
    first checkpoint starts again from step 0 with its saved config.
    """
    if not is_run_dir(run_dir):
        raise UserError(f"cannot resume {run_dir}: it is not a tinygpt run directory")
    if not list_checkpoints(run_dir):
        return restart(_config_with_steps(load_run_config(run_dir), steps), run_dir, out, until)
    folder, meta = _newest_checkpoint(run_dir)
    config = _config_with_steps(RunConfig.from_dict(meta["config"]), steps)
    if meta["step"] >= config.train.steps:
        raise UserError(
            f"{run_dir} already finished {meta['step']} steps; pass --steps N to train further"
        )
    session = setup(config)
    stop_if_requested()
    safetensors.torch.load_model(session.model, str(folder / "model.safetensors"))
    restore_train_state(session, load_train_state(folder))
    barrier(session.group)  # every rank has read the checkpoint before rank 0 tidies up
    if session.group.is_main:
        clean_checkpoints(run_dir)
        drop_metrics_after(run_dir / "metrics.jsonl", session.step)
        write_run_config(run_dir, config)
        print(f"resuming {run_dir} from step {session.step}", file=out or sys.stdout)
    return run(session, run_dir, out, until)


def load_run_config(run_dir: Path) -> RunConfig:
    try:
        return RunConfig.from_dict(json.loads((run_dir / "config.json").read_text("utf-8")))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {run_dir / 'config.json'}: {exc}") from None


def _config_with_steps(config: RunConfig, steps: int | None) -> RunConfig:
    if steps is None:
        return config
    return dataclasses.replace(config, train=dataclasses.replace(config.train, steps=steps))


def run(session: Session, run_dir: Path, out: TextIO | None, until: int | None) -> dict[str, float]:
    """Report, fit, plot the losses and print a sample (rank 0 alone reports)."""
    if not session.group.is_main:
        return fit(session, run_dir, io.StringIO(), until)
    out = out or sys.stdout
    print_summary(session, run_dir, out)
    final = fit(session, run_dir, out, until)
    plot_losses(run_dir / "metrics.jsonl", run_dir / "loss.png")
    config = session.config
    if config.train.sample_tokens and session.step == config.train.steps:
        print("--- sample ---", file=out)
        print_sample(session, config.train.sample_tokens, out)
    return final


def print_summary(session: Session, run_dir: Path, out: TextIO) -> None:
    """A few readable lines on what is about to run; the whole config is in config.json."""
    cfg, data = session.config, session.data
    n_params = count_parameters(session.model)
    precision = "bfloat16 autocast" if session.dtype else "float32"
    group = f", {session.group.world_size} processes" if session.group.enabled else ""
    optimizer = "Muon + AdamW" if cfg.optim.optimizer == "muon" else "AdamW"
    tokens = cfg.train.batch_size * cfg.train.grad_accum_steps * cfg.model.block_size
    lines = {
        "model": f"{session.model.describe()}; {n_params:,} parameters",
        "data": f"{cfg.data.dataset}: {len(data.train):,} train and {len(data.val):,} val "
        f"tokens, vocabulary {data.tokenizer.vocab_size} ({cfg.data.tokenizer})",
        "training": f"{cfg.train.steps:,} steps of {tokens:,} tokens, {optimizer}, "
        f"{cfg.optim.schedule} schedule, seed {cfg.train.seed}",
        "device": f"{session.device}, {precision}{group}",
        "run directory": f"{run_dir} (full config: {run_dir / 'config.json'})",
    }
    for name, text in lines.items():
        print(textwrap.fill(f"{name}: {text}", width=100, subsequent_indent="  "), file=out)


def print_sample(session: Session, max_new_tokens: int, out: TextIO) -> None:
    cfg = session.config
    sampling = SampleConfig(max_new_tokens=max_new_tokens, seed=cfg.train.seed)
    pieces = stream_text(session.model, session.data.tokenizer, "", cfg.model.block_size, sampling)
    for piece in pieces:
        out.write(piece)
        out.flush()
    out.write("\n")
