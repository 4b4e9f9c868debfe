"""Training: setup -> fit -> evaluate -> checkpoint, with no global state.

Everything a run needs is checked (corpus, splits, device) before its run directory is
created, so a mistake leaves nothing behind. A run resumed from a checkpoint continues with
the same weights, optimizer state, learning rate and batch stream, so on a CPU it ends bit
for bit where an uninterrupted run ends.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import safetensors.torch
import torch
from torch import nn
from tqdm import tqdm

from tinygpt.batches import check_length, random_batch
from tinygpt.checkpoint import (
    find_checkpoint,
    is_run_dir,
    load_train_state,
    prune_checkpoints,
    save_checkpoint,
)
from tinygpt.config import RunConfig, SampleConfig
from tinygpt.data import PreparedData, prepare
from tinygpt.errors import UserError
from tinygpt.evaluate import bits_per_token, estimate_loss
from tinygpt.generate import stream_text
from tinygpt.models import build_model, count_parameters
from tinygpt.optim import lr_at, make_optimizer
from tinygpt.plot import plot_losses
from tinygpt.runtime import (
    autocast_dtype,
    resolve_device,
    rng_states,
    seed_everything,
    set_rng_states,
)


@dataclass
class Session:
    """A run's live state: what `fit` steps forward."""

    config: RunConfig
    data: PreparedData
    model: nn.Module  # the module whose weights are saved
    forward: Callable[..., Any]  # the model, or its compiled version
    optimizer: torch.optim.Optimizer
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype; None: float32
    generator: torch.Generator  # the training batch stream
    step: int = 0  # optimizer steps done
    best_val_loss: float = math.inf
    elapsed_s: float = 0.0  # training time before this process (resumed runs)


class MetricsLog:
    """metrics.jsonl: one JSON object per line, each with `step` and `elapsed_s`."""

    def __init__(self, path: Path, elapsed_before: float = 0.0) -> None:
        self.file = path.open("a", encoding="utf-8")
        self.start = time.perf_counter() - elapsed_before

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def write(self, step: int, **values: float) -> None:
        record = {"step": step, "elapsed_s": round(self.elapsed(), 4), **values}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def setup(config: RunConfig) -> Session:
    """Prepare the data and build the model and optimizer for a config."""
    data = prepare(config.data)
    check_length(data.train, config.model.block_size, "train")
    check_length(data.val, config.model.block_size, "val")
    device = resolve_device(config.train.device)
    seed_everything(config.train.seed)
    model = build_model(config.model, data.tokenizer.vocab_size).to(device)
    forward = torch.compile(model) if config.train.compile else model
    optimizer = make_optimizer(model, config.optim, device)
    generator = torch.Generator().manual_seed(config.train.seed)
    dtype = autocast_dtype(config.train.dtype, device)
    return Session(config, data, model, forward, optimizer, device, dtype, generator)


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
    check_run_dir(run_dir, overwrite)
    session = setup(config)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    return run(session, run_dir, out or sys.stdout, until)


def resume(
    run_dir: Path, steps: int | None = None, out: TextIO | None = None, until: int | None = None
) -> dict[str, float]:
    """Continue a run from its newest checkpoint (optionally to a new total of `steps`)."""
    if not is_run_dir(run_dir):
        raise UserError(f"cannot resume {run_dir}: it is not a tinygpt run directory")
    folder = find_checkpoint(run_dir)
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    values = meta["config"]
    if steps is not None:
        values["train"]["steps"] = steps
    config = RunConfig.from_dict(values)
    if meta["step"] >= config.train.steps:
        raise UserError(
            f"{run_dir} already finished {meta['step']} steps; pass --steps N to train further"
        )
    session = setup(config)
    safetensors.torch.load_model(session.model, str(folder / "model.safetensors"))
    restore_train_state(session, load_train_state(folder))
    _drop_metrics_after(run_dir / "metrics.jsonl", session.step)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    print(f"resuming {run_dir} from step {session.step}", file=out or sys.stdout)
    return run(session, run_dir, out or sys.stdout, until)


def train_state(session: Session, elapsed_s: float) -> dict[str, Any]:
    """Everything besides the weights that exact resumption needs; tensors and numbers only."""
    return {
        "step": session.step,
        "best_val_loss": session.best_val_loss,
        "elapsed_s": elapsed_s,
        "optimizer": session.optimizer.state_dict(),
        "batch_generator": session.generator.get_state(),
        "rng": rng_states(session.device),
    }


def restore_train_state(session: Session, state: dict[str, Any]) -> None:
    session.step = int(state["step"])
    session.best_val_loss = float(state["best_val_loss"])
    session.elapsed_s = float(state["elapsed_s"])
    session.optimizer.load_state_dict(state["optimizer"])
    session.generator.set_state(state["batch_generator"])
    set_rng_states(state["rng"])


def _drop_metrics_after(path: Path, step: int) -> None:
    """Lines logged after the checkpoint we resume from will be logged again."""
    if not path.exists():
        return
    kept = [line for line in path.open(encoding="utf-8") if json.loads(line)["step"] <= step]
    path.write_text("".join(kept), encoding="utf-8")


def run(session: Session, run_dir: Path, out: TextIO, until: int | None) -> dict[str, float]:
    """Report, fit, plot the losses and print a sample."""
    config = session.config
    n_params = count_parameters(session.model)
    print(f"run directory: {run_dir}", file=out)
    print(f"config: {json.dumps(config.to_dict())}", file=out)
    precision = "bfloat16 autocast" if session.dtype else "float32"
    print(
        f"model: {config.model.arch}, {n_params:,} parameters, on {session.device}, {precision}",
        file=out,
    )
    final = fit(session, run_dir, out, until)
    plot_losses(run_dir / "metrics.jsonl", run_dir / "loss.png")
    if config.train.sample_tokens and session.step == config.train.steps:
        print("--- sample ---", file=out)
        print_sample(session, config.train.sample_tokens, out)
    return final


def print_sample(session: Session, max_new_tokens: int, out: TextIO) -> None:
    cfg = session.config
    sampling = SampleConfig(max_new_tokens=max_new_tokens, seed=cfg.train.seed)
    pieces = stream_text(session.model, session.data.tokenizer, "", cfg.model.block_size, sampling)
    for piece in pieces:
        out.write(piece)
        out.flush()
    out.write("\n")


def autocast(session: Session) -> contextlib.AbstractContextManager:
    if session.dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(session.device.type, dtype=session.dtype)


def evaluate(session: Session) -> dict[str, float]:
    cfg = session.config
    splits = {"train": session.data.train, "val": session.data.val}
    with autocast(session):
        losses = estimate_loss(
            session.forward, splits, cfg.train.eval_batches, cfg.train.batch_size,
            cfg.model.block_size, cfg.train.seed, session.device,
        )  # fmt: skip
    return {**losses, "val_bpc": bits_per_token(losses["val_loss"])}


def train_step(session: Session) -> tuple[float, float | None]:
    """One optimizer step over `grad_accum_steps` micro-batches: (mean loss, grad norm)."""
    cfg = session.config
    accum = cfg.train.grad_accum_steps
    lr = lr_at(session.step, cfg.optim, cfg.train.steps)
    for group in session.optimizer.param_groups:
        group["lr"] = lr
    total = torch.zeros((), device=session.device)
    for _ in range(accum):
        x, y = random_batch(
            session.data.train, cfg.train.batch_size, cfg.model.block_size, session.generator
        )
        with autocast(session):
            _, loss = session.forward(x.to(session.device), y.to(session.device))
        (loss / accum).backward()  # the mean over all micro-batches, as one big batch
        total += loss.detach()
    grad_norm = None
    if cfg.optim.grad_clip > 0:
        grad_norm = nn.utils.clip_grad_norm_(session.model.parameters(), cfg.optim.grad_clip)
    session.optimizer.step()
    session.optimizer.zero_grad(set_to_none=True)
    session.step += 1
    return (total / accum).item(), None if grad_norm is None else grad_norm.item()


def fit(session: Session, run_dir: Path, out: TextIO, until: int | None = None) -> dict[str, float]:
    """The training loop: steps, periodic evaluation and checkpoints, metrics.jsonl."""
    cfg = session.config.train
    last_step = min(cfg.steps, until) if until is not None else cfg.steps
    tokens_per_step = cfg.batch_size * cfg.grad_accum_steps * session.config.model.block_size
    log = MetricsLog(run_dir / "metrics.jsonl", session.elapsed_s)
    bar = tqdm(total=cfg.steps, initial=session.step, desc="train", unit="step", disable=None)
    session.model.train()
    try:
        last = {}
        if session.step == 0:
            last = _evaluate_and_save(session, run_dir, log, out)
        window_start, window_steps = time.perf_counter(), 0
        while session.step < last_step:
            loss, grad_norm = train_step(session)
            window_steps += 1
            bar.update(1)
            step = session.step
            if step % cfg.log_interval == 0 or step == cfg.steps:
                tokens_per_s = window_steps * tokens_per_step / (time.perf_counter() - window_start)
                lr = session.optimizer.param_groups[0]["lr"]
                record = {"loss": round(loss, 6), "lr": lr, "tokens_per_s": round(tokens_per_s, 1)}
                if grad_norm is not None:
                    record["grad_norm"] = round(grad_norm, 6)
                log.write(step, **record)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}")
                window_start, window_steps = time.perf_counter(), 0
            if step % cfg.eval_interval == 0 or step == cfg.steps:
                last = _evaluate_and_save(session, run_dir, log, out)
                window_start = time.perf_counter()  # keep evaluation out of tokens/s
    finally:
        bar.close()
        log.close()
    return last


def _evaluate_and_save(
    session: Session, run_dir: Path, log: MetricsLog, out: TextIO
) -> dict[str, float]:
    step = session.step
    metrics = {k: round(v, 6) for k, v in evaluate(session).items()}
    log.write(step, **metrics)
    line = (
        f"step {step}: train loss {metrics['train_loss']:.4f}, val loss {metrics['val_loss']:.4f}"
    )
    tqdm.write(line, file=out)
    cfg, tokenizer = session.config, session.data.tokenizer
    is_best = metrics["val_loss"] < session.best_val_loss
    if is_best:
        session.best_val_loss = metrics["val_loss"]
    state = train_state(session, log.elapsed())
    save_checkpoint(run_dir, step, session.model, cfg, tokenizer, metrics, state)
    if is_best:
        save_checkpoint(run_dir, step, session.model, cfg, tokenizer, metrics, name="best")
    prune_checkpoints(run_dir, cfg.train.keep_checkpoints)
    return metrics
