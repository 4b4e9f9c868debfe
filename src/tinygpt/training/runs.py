"""Runs: start one in its directory, continue it from a checkpoint, and finish it.

One process writes a run directory: it holds the directory's lock (rundir.writing) from
before its first look until the run ends, and a second writer is refused at once. Everything
a run needs is checked (corpus, splits, device) before anything is written in it, so a
mistake leaves nothing behind. A run resumed from a checkpoint continues with
the same weights, optimizer state, learning rate and batch stream, so on a CPU it ends bit
for bit where an uninterrupted run ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Any, TextIO

import safetensors.torch
import torch

from tinygpt.checkpoint import clean_checkpoints, load_checkpoint, load_train_state
from tinygpt.config import RunConfig, SampleConfig
from tinygpt.errors import Interrupted, UserError
from tinygpt.evaluate import describe_score
from tinygpt.generate import stream_text
from tinygpt.models import count_parameters, parameter_summary
from tinygpt.rundir import (
    WEIGHTS_FILE,
    RunDir,
    check_run_dir,
    find_checkpoint,
    is_complete,
    is_finished,
    is_run_dir,
    list_checkpoints,
    newest_checkpoint,
    read_meta,
    why_not_a_run,
    writing,
)
from tinygpt.runtime import barrier, cpu_threads, distributed_from_env, restart_count
from tinygpt.tokenizers import Tokenizer, tokenizer_from_dict
from tinygpt.training.loop import Session, fit, restore_train_state, training_session
from tinygpt.training.metrics import drop_metrics_after
from tinygpt.training.signals import stop_if_requested, stop_request
from tinygpt.viz.plot import losses_plotted_meanwhile, plot_losses


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
    with writer_lock(run_dir):
        check_run_dir(run_dir, overwrite)
        with training_session(config, *starting_point(config)) as session:
            stop_if_requested()  # a Ctrl-C while torch loaded or the data was ready: write nothing
            barrier(session.group)  # every rank has looked before rank 0 fills the directory
            if session.group.is_main:
                RunDir(run_dir).clear()  # an earlier run, with --overwrite
                RunDir(run_dir).write_config(session.config)
            barrier(session.group)
            return run(session, run_dir, out, until)


def writer_lock(run_dir: Path) -> contextlib.AbstractContextManager:
    """The run directory's lock (rundir.writing), held by the one process that writes it:
    rank 0 of a torchrun group."""
    if distributed_from_env().is_main:
        return writing(run_dir)
    return contextlib.nullcontext()


def restart(
    config: RunConfig, run_dir: Path, out: TextIO | None, until: int | None
) -> dict[str, float]:
    """Start a run that has no complete checkpoint again from step 0, in its own directory,
    keeping what it logged so far apart (RunDir.earlier_metrics)."""
    with training_session(config, *starting_point(config)) as session:
        stop_if_requested()
        barrier(session.group)
        if session.group.is_main:
            _set_aside_earlier_start(run_dir, config, out or sys.stdout)
        barrier(session.group)
        return run(session, run_dir, out, until)


def _set_aside_earlier_start(run_dir: Path, config: RunConfig, out: TextIO) -> None:
    paths = RunDir(run_dir)
    kept = f" (its earlier metrics are kept in {paths.earlier_metrics.name})"
    had_metrics = paths.metrics.exists()
    print(
        f"{run_dir} has no complete checkpoint to resume from; starting it again from "
        f"step 0{kept if had_metrics else ''}",
        file=out,
    )
    if had_metrics:
        with paths.earlier_metrics.open("a", encoding="utf-8") as earlier:
            earlier.write(paths.metrics.read_text(encoding="utf-8"))
        paths.metrics.unlink()
    shutil.rmtree(paths.checkpoints, ignore_errors=True)  # leftovers of a failed save
    paths.write_config(config)


FINE_TUNE_MAY_CHANGE = ("dropout", "block_size")  # block_size: only shorter (crop_block_size)


def starting_point(config: RunConfig) -> tuple[Tokenizer | None, dict[str, torch.Tensor] | None]:
    """The tokenizer and weights a new run starts from: its `init_from` run's (with the
    context cut to the run's block_size), or none (a fresh tokenizer, random weights)."""
    if not config.train.init_from:
        return None, None
    source = load_checkpoint(Path(config.train.init_from))
    check_same_model(config, source.config, config.train.init_from)
    model = source.model
    if config.model.block_size < source.config.model.block_size:
        if not model.supports_block_crop:
            raise UserError(f"a {source.config.model.arch} model keeps its block_size")
        model.crop_block_size(config.model.block_size)
    return source.tokenizer, model.state_dict()


def check_same_model(config: RunConfig, source: RunConfig, where: str) -> None:
    """A fine-tune's model is the one it starts from, but for FINE_TUNE_MAY_CHANGE."""
    for name, value in dataclasses.asdict(source.model).items():
        if name not in FINE_TUNE_MAY_CHANGE and getattr(config.model, name) != value:
            raise UserError(
                f"model.{name} is {value!r} in {where}; a fine-tune keeps the model it starts "
                f"from (it may change {' and '.join(FINE_TUNE_MAY_CHANGE)})"
            )
    block, longest = config.model.block_size, source.model.block_size
    if block > longest:
        raise UserError(f"model.block_size {block} is longer than {where}'s {longest}")


def fine_tune_config(config: RunConfig, given: dict[str, dict[str, Any]]) -> RunConfig:
    """A run starting from `config.train.init_from`: its model and tokenizer are that run's;
    of the model, the command line may change only FINE_TUNE_MAY_CHANGE (`given`: the
    options given there)."""
    where = config.train.init_from
    source = RunConfig.from_dict(read_meta(find_checkpoint(Path(where)))["config"])
    for name in given.get("model", {}):
        if name not in FINE_TUNE_MAY_CHANGE:
            raise UserError(
                f"--model.{name}: the model comes from {where} (a fine-tune may change only "
                f"{' and '.join(FINE_TUNE_MAY_CHANGE)})"
            )
    tokenizer = given.get("data", {}).get("tokenizer", source.data.tokenizer)
    if tokenizer != source.data.tokenizer:
        raise UserError(f"--data.tokenizer: {where} reads {source.data.tokenizer} tokens")
    model = dataclasses.replace(source.model, **given.get("model", {}))
    data = dataclasses.replace(
        config.data, tokenizer=source.data.tokenizer, vocab_size=source.data.vocab_size
    )
    fine_tune = dataclasses.replace(config, model=model, data=data)
    check_same_model(fine_tune, source, where)
    return fine_tune


def resume(
    run_dir: Path, steps: int | None = None, out: TextIO | None = None, until: int | None = None
) -> dict[str, float]:
    """Continue a run from its newest complete checkpoint (optionally to `steps` in all).

    Leftovers of an interrupted save are ignored and then removed; a run stopped before its
    first checkpoint starts again from step 0 with its saved config.
    """
    if not is_run_dir(run_dir):
        raise UserError(f"cannot resume: {why_not_a_run(run_dir)}")
    with writer_lock(run_dir):
        return _resume(run_dir, steps, out, until)


def _resume(
    run_dir: Path, steps: int | None, out: TextIO | None, until: int | None
) -> dict[str, float]:
    if not list_checkpoints(run_dir):
        config = _config_with_steps(RunDir(run_dir).read_config(), steps)
        return restart(config, run_dir, out, until)
    folder, meta = newest_checkpoint(run_dir)
    config = _config_with_steps(RunConfig.from_dict(meta["config"]), steps)
    if meta["step"] >= config.train.steps:
        raise UserError(
            f"{run_dir} already finished {meta['step']} steps; --steps is the total, so pass "
            f"more than {meta['step']} to train further"
        )
    with training_session(config, tokenizer_from_dict(meta["tokenizer"])) as session:
        stop_if_requested()
        safetensors.torch.load_model(session.model, str(folder / WEIGHTS_FILE))
        restore_train_state(session, load_train_state(folder))
        barrier(session.group)  # every rank has read the checkpoint before rank 0 tidies up
        if session.group.is_main:
            clean_checkpoints(run_dir)
            drop_metrics_after(RunDir(run_dir).metrics, session.step)
            RunDir(run_dir).write_config(config)
            print(f"resuming {run_dir} from step {session.step}", file=out or sys.stdout)
        return run(session, run_dir, out, until)


def _config_with_steps(config: RunConfig, steps: int | None) -> RunConfig:
    """The config to resume with: `steps` in all, if given (which ends a time limit)."""
    if steps is None:
        return config
    train = dataclasses.replace(config.train, steps=steps, time_limit=0.0)
    return dataclasses.replace(config, train=train)


def run(session: Session, run_dir: Path, out: TextIO | None, until: int | None) -> dict[str, float]:
    """Report, fit, plot the losses and print a sample (rank 0 alone reports)."""
    if not session.group.is_main:
        return fit(session, run_dir, io.StringIO(), until)
    out = out or sys.stdout
    RunDir(run_dir).write_tokenizer(session.data.tokenizer)
    print_summary(session, run_dir, out)
    final = fit(session, run_dir, out, until)
    config, paths = session.config, RunDir(run_dir)
    if not config.train.sample_tokens or session.step < config.train.steps:
        plot_losses(paths.metrics, paths.loss_plot)
        return final
    # the picture is drawn in a child process on a core of its own, the sample on the rest
    one_core_left = cpu_threads(torch.get_num_threads() - 1)
    with losses_plotted_meanwhile(paths.metrics, paths.loss_plot), one_core_left:
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
    length = f"{cfg.train.steps:,} steps of {tokens:,} tokens"
    if session.budget is not None:  # a time limit plans the length
        length = (
            f"steps of {tokens:,} tokens, as many as fit in {cfg.train.time_limit:g} s "
            f"(at most {cfg.train.steps:,})"
        )
    describe = session.model.describe()
    lines = {
        "model": f"{describe}; {n_params:,} parameters ({n_params / 1e6:.6f}M)",
        "parameters": parameter_summary(session.model),
        "data": f"{cfg.data.dataset}: {len(data.train):,} train and {len(data.val):,} val "
        f"tokens, vocabulary {data.tokenizer.vocab_size} ({cfg.data.tokenizer})",
        "training": f"{length}, {optimizer}, {cfg.optim.schedule} schedule, seed {cfg.train.seed}",
        "device": f"{session.device}, {precision}{group}{_threads(session)}",
    }
    for name, text in lines.items():
        print(textwrap.fill(f"{name}: {text}", width=100, subsequent_indent="  "), file=out)
    # paths whole, each on its own line: copy-pastable at any terminal width
    print(f"run directory: {run_dir}", file=out)
    print(f"full config: {RunDir(run_dir).config}", file=out)


def _threads(session: Session) -> str:
    threads = session.config.train.threads
    return f", {threads} thread{'s' if threads > 1 else ''}" if session.device.type == "cpu" else ""


def print_sample(session: Session, max_new_tokens: int, out: TextIO) -> None:
    cfg = session.config
    sampling = SampleConfig(max_new_tokens=max_new_tokens, seed=cfg.train.seed)
    model, tokenizer = session.saved_model, session.data.tokenizer
    pieces = stream_text(model, tokenizer, "", cfg.model.block_size, sampling)
    stop_request.listen()  # a stop ends the sample at its next token, in one line
    try:
        for piece in pieces:
            out.write(piece)
            out.flush()
            if (signum := stop_request.take()) is not None:
                out.write("\n")
                raise Interrupted(signum, "during the sample after training; the run is complete")
    finally:
        stop_request.release()
    out.write("\n")


def start_or_resume(
    run_dir: Path,
    config: RunConfig | None = None,
    *,
    steps: int | None = None,
    overwrite: bool = False,
) -> None:
    """What `tinygpt train` does with a run directory: start `config` in it, or resume it
    (config None, optionally to `steps` in all). After torchrun restarts a failed group, a
    new run's directory already holds the run: it is resumed, or left alone if it finished
    (a process that crashed on its way out after the last save). Rank 0 reports the end."""
    is_main = distributed_from_env().is_main
    if config is not None and restart_count() > 0 and is_run_dir(run_dir):
        if is_finished(run_dir):
            if is_main:
                print(f"{run_dir} already finished; nothing left to do after the restart")
            return
        config = None
    if config is None:
        final = resume(run_dir, steps=steps)
    else:
        final = train(config, run_dir, overwrite=overwrite)
    if is_main:
        print(
            f"final: train loss {final['train_loss']:.4f}, val loss {final['val_loss']:.4f}"
            + (f" ({final['val_bpb']:.4f} bits per byte)" if "val_bpb" in final else "")
        )
        if "whole_val_loss" in final:
            score = describe_score(final["whole_val_loss"], final["whole_val_bpb"])
            tokens = int(final.get("whole_val_tokens", 0))
            print(f"val split, all {tokens:,} tokens after the first: {score}")
        if "sampled_val_loss" in final:
            print(describe_sampled_val(final, run_dir))
        print(f"saved in {run_dir}")
        print(f"sample with: tinygpt sample {run_dir}")
        print_best_if_earlier(run_dir, final["val_loss"])


def describe_sampled_val(final: dict[str, float], run_dir: Path) -> str:
    """The end-of-run score of a val split too long to read whole, and how to get it all."""
    loss, stderr = final["sampled_val_loss"], final["sampled_val_stderr"]
    return (
        f"val split, {int(final['sampled_val_tokens']):,} tokens of evenly spaced windows: "
        f"loss {loss:.4f} ± {stderr:.4f} (standard error), {final['sampled_val_bpb']:.4f} bits "
        f"per byte; every token: tinygpt eval {run_dir}"
    )


def print_best_if_earlier(run_dir: Path, final_val_loss: float) -> None:
    """Point to the best checkpoint when the run over-fitted after it."""
    best = RunDir(run_dir).best
    if not is_complete(best):
        return
    meta = read_meta(best)
    if meta["metrics"]["val_loss"] < final_val_loss:
        print(
            f"lowest val loss {meta['metrics']['val_loss']:.4f} at step {meta['step']}: "
            f"tinygpt sample {best}"
        )
