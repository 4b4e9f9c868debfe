"""Training: setup -> fit -> evaluate -> checkpoint, with no global state.

Everything a run needs is checked (corpus, splits, device) before its run directory is
created, so a mistake leaves nothing behind.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch
from torch import nn
from tqdm import tqdm

from tinygpt.batches import check_length, random_batch
from tinygpt.checkpoint import is_run_dir, save_checkpoint
from tinygpt.config import RunConfig
from tinygpt.data import PreparedData, prepare
from tinygpt.errors import UserError
from tinygpt.evaluate import bits_per_token, estimate_loss
from tinygpt.generate import stream_text
from tinygpt.models import build_model, count_parameters
from tinygpt.optim import make_optimizer
from tinygpt.runtime import resolve_device, seed_everything


@dataclass
class Session:
    """A run's live state: what `fit` steps forward."""

    config: RunConfig
    data: PreparedData
    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    generator: torch.Generator  # the training batch stream


class MetricsLog:
    """metrics.jsonl: one JSON object per line, each with `step` and `elapsed_s`."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("a", encoding="utf-8")
        self.start = time.perf_counter()

    def write(self, step: int, **values: float) -> None:
        record = {"step": step, "elapsed_s": round(time.perf_counter() - self.start, 4), **values}
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
    optimizer = make_optimizer(model, config.optim)
    generator = torch.Generator().manual_seed(config.train.seed)
    return Session(config, data, model, optimizer, device, generator)


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
            f"run directory {run_dir} already exists; choose another --out or pass --overwrite"
        )


def train(
    config: RunConfig, run_dir: Path, overwrite: bool = False, out: TextIO | None = None
) -> dict[str, float]:
    """Train a model from scratch into `run_dir`; return the final evaluation."""
    out = out or sys.stdout
    check_run_dir(run_dir, overwrite)
    session = setup(config)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    n_params = count_parameters(session.model)
    print(f"run directory: {run_dir}", file=out)
    print(f"config: {json.dumps(config.to_dict())}", file=out)
    print(f"model: {config.model.arch}, {n_params:,} parameters, on {session.device}", file=out)
    final = fit(session, run_dir, out)
    if config.train.sample_tokens:
        print("--- sample ---", file=out)
        print_sample(session, config.train.sample_tokens, out)
    return final


def print_sample(session: Session, max_new_tokens: int, out: TextIO) -> None:
    cfg = session.config
    pieces = stream_text(
        session.model,
        session.data.tokenizer,
        "",
        max_new_tokens,
        cfg.model.block_size,
        seed=cfg.train.seed,
        device=session.device,
    )
    for piece in pieces:
        out.write(piece)
        out.flush()
    out.write("\n")


def evaluate(session: Session) -> dict[str, float]:
    cfg = session.config
    splits = {"train": session.data.train, "val": session.data.val}
    losses = estimate_loss(
        session.model,
        splits,
        cfg.train.eval_batches,
        cfg.train.batch_size,
        cfg.model.block_size,
        cfg.train.seed,
        session.device,
    )
    return {**losses, "val_bpc": bits_per_token(losses["val_loss"])}


def train_step(session: Session) -> torch.Tensor:
    """One optimizer step on a fresh random batch; returns the (detached) loss."""
    cfg = session.config
    x, y = random_batch(
        session.data.train, cfg.train.batch_size, cfg.model.block_size, session.generator
    )
    _, loss = session.model(x.to(session.device), y.to(session.device))
    session.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    session.optimizer.step()
    return loss.detach()


def fit(session: Session, run_dir: Path, out: TextIO) -> dict[str, float]:
    """The training loop: steps, periodic evaluation and checkpoints, metrics.jsonl."""
    cfg = session.config.train
    tokens_per_step = cfg.batch_size * session.config.model.block_size
    log = MetricsLog(run_dir / "metrics.jsonl")
    bar = tqdm(total=cfg.steps, desc="train", unit="step", disable=None, dynamic_ncols=True)
    session.model.train()
    try:
        last = _evaluate_and_save(session, run_dir, 0, log, bar, out)
        window_start, window_steps = time.perf_counter(), 0
        for step in range(1, cfg.steps + 1):
            loss = train_step(session)
            window_steps += 1
            bar.update(1)
            if step % cfg.log_interval == 0 or step == cfg.steps:
                tokens_per_s = window_steps * tokens_per_step / (time.perf_counter() - window_start)
                record = {"loss": round(loss.item(), 6), "tokens_per_s": round(tokens_per_s, 1)}
                log.write(step, **record)
                bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{tokens_per_s:,.0f}")
                window_start, window_steps = time.perf_counter(), 0
            if step % cfg.eval_interval == 0 or step == cfg.steps:
                last = _evaluate_and_save(session, run_dir, step, log, bar, out)
                window_start = time.perf_counter()  # keep evaluation out of tokens/s
    finally:
        bar.close()
        log.close()
    return last


def _evaluate_and_save(
    session: Session, run_dir: Path, step: int, log: MetricsLog, bar: tqdm, out: TextIO
) -> dict[str, float]:
    metrics = {k: round(v, 6) for k, v in evaluate(session).items()}
    log.write(step, **metrics)
    line = (
        f"step {step}: train loss {metrics['train_loss']:.4f}, val loss {metrics['val_loss']:.4f}"
    )
    bar.write(line, file=out)
    cfg = session.config
    save_checkpoint(run_dir, step, session.model, cfg, session.data.tokenizer, metrics)
    return metrics
