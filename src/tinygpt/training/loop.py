"""The training loop: setup -> fit (steps, evaluation, checkpoints, metrics, signals).

A `Session` is a run's live state; `train_step` advances it by one optimizer step, `advance`
adds a time limit's planning (budget.py), and `fit` is the loop around it. What a checkpoint
must hold for exact resumption is `train_state`; starting, resuming and finishing a run in
its directory is `runs.py`'s work. What a run switches on for the whole process (torch's
thread count; deterministic algorithms for a compiled CPU run) is set by `setup`;
`training_session` gives it back when the caller is done with the session, however that ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TextIO, cast

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from tinygpt.checkpoint import prune_checkpoints, save_checkpoint
from tinygpt.config import RunConfig, fit_to_vocabulary
from tinygpt.cpus import choose_threads
from tinygpt.data.batches import check_length, random_batch
from tinygpt.data.corpora import PreparedData, prepare
from tinygpt.errors import TrainingInterrupted, UserError, note
from tinygpt.evaluate import (
    EvaluationStopped,
    bits_per_byte,
    estimate_loss,
    never,
    rows_per_forward,
    sampled_split_loss,
    split_loss,
)
from tinygpt.models import LanguageModel, build_model
from tinygpt.rundir import RunDir, step_folder
from tinygpt.runtime import (
    SINGLE_PROCESS,
    Distributed,
    ProcessSettings,
    all_mean,
    any_rank,
    autocast_dtype,
    barrier,
    distributed_from_env,
    init_distributed,
    require_compiler,
    resolve_device,
    rng_states,
    seed_everything,
    set_rng_states,
)
from tinygpt.tokenizers import Tokenizer
from tinygpt.training.averaging import moving_average
from tinygpt.training.budget import REPLAN_EVERY, TimeBudget
from tinygpt.training.metrics import MetricsLog, Throughput, require_tensorboard
from tinygpt.training.optim import EagerOptimizer, LrSchedule, OptimizerPair, make_optimizer
from tinygpt.training.signals import crash, planned_fault, stop_request


@dataclass
class Session:
    """A run's live state: what `fit` steps forward."""

    config: RunConfig
    data: PreparedData
    model: LanguageModel  # the module whose weights are saved
    forward: Callable[..., Any]  # the model, or its compiled version
    optimizer: EagerOptimizer | OptimizerPair
    schedule: LrSchedule  # sets the optimizer's learning rates for each step
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype; None: float32
    generator: torch.Generator  # the training batch stream (the same on every rank)
    group: Distributed = SINGLE_PROCESS  # this process's place in a torchrun group
    step: int = 0  # optimizer steps done
    best_val_loss: float = math.inf
    elapsed_s: float = 0.0  # wall time of the run before this process (resumed runs)
    training_s: float = 0.0  # time in training steps, over all of the run's processes
    budget: TimeBudget | None = None  # plans the length of a time-limited run until its end
    average: AveragedModel | None = None  # optim.ema: a moving average of the weights

    @property
    def planned_steps(self) -> int:
        """The run's length: train.steps, or what a time limit plans so far."""
        return self.schedule.total_steps

    @property
    def saved_model(self) -> LanguageModel:
        """The model evaluations score and checkpoints save: the moving average of the
        weights where optim.ema asks for one, else the one the optimizer trains."""
        if self.average is None:
            return self.model
        return cast(LanguageModel, self.average.module)  # a copy of self.model


@contextlib.contextmanager
def training_session(
    config: RunConfig,
    tokenizer: Tokenizer | None = None,
    weights: dict[str, torch.Tensor] | None = None,
) -> Iterator[Session]:
    """`setup`'s session, for the `with` block; at its end, however it ends, the process
    gets back the thread count and deterministic mode it had before."""
    before = ProcessSettings.current()
    try:
        yield setup(config, tokenizer, weights)
    finally:
        before.restore()


def setup(
    config: RunConfig,
    tokenizer: Tokenizer | None = None,
    weights: dict[str, torch.Tensor] | None = None,
) -> Session:
    """Prepare the data and build the model and optimizer for a config, and give torch the
    run's thread count (train.threads) and, for a compiled CPU run, deterministic
    algorithms; `training_session` gives the process's own back.

    A run that goes on from trained weights (a resumed or a fine-tuned one) gives their
    tokenizer, which encodes the corpus instead of a new one, and a fine-tune its starting
    `weights`.
    """
    if config.train.tensorboard:
        require_tensorboard()  # a missing extra fails before any work is done
    data = prepare(config.data, tokenizer)
    check_length(data.train, config.model.block_size, "train")
    check_length(data.val, config.model.block_size, "val")
    group = distributed_from_env()
    device = init_distributed(group, resolve_device(config.train.device))
    config = _with_threads(config, group)
    torch.set_num_threads(config.train.threads)
    seed_everything(config.train.seed)
    fitted = fit_to_vocabulary(config.model, data.tokenizer.vocab_size)
    config = dataclasses.replace(config, model=fitted)  # what runs is what gets saved
    model = build_model(config.model, data.tokenizer.vocab_size)
    if weights is not None:
        model.load_state_dict(weights)
    else:  # (a resumed run's weights replace these too, after setup)
        model.warm_start(data.train)
    model = model.to(device)
    if config.train.compile:
        require_compiler(device)
        if device.type == "cpu":
            # otherwise the compiled CPU kernels' threads add up gradients (the embeddings'
            # scatter-add) in any order: a run would not repeat itself, nor resume bit for
            # bit. GPU runs promise no bit-exact resume (atomics) and keep the fast kernels.
            torch.use_deterministic_algorithms(True)
    forward = torch.compile(model) if config.train.compile else model
    if group.enabled:  # averages gradients over the group; starts from rank 0's weights
        forward = DistributedDataParallel(
            forward, device_ids=[device] if device.type == "cuda" else None
        )
        torch.manual_seed(config.train.seed + group.rank)  # dropout differs between ranks
    optimizer = make_optimizer(model, config.optim, device)
    session = Session(
        config=config,
        data=data,
        model=model,
        forward=forward,
        optimizer=optimizer,
        schedule=LrSchedule(optimizer, config.optim, config.train.steps),
        device=device,
        dtype=autocast_dtype(config.train.dtype, device),
        generator=torch.Generator().manual_seed(config.train.seed),
        group=group,
    )
    if config.train.time_limit > 0:
        session.budget = TimeBudget(config.train.time_limit, config.train.steps)
    if config.optim.ema > 0:
        session.average = moving_average(model, config.optim.ema)
    return session


def _with_threads(config: RunConfig, group: Distributed) -> RunConfig:
    """The config with its thread count chosen (cpus.choose_threads) where it was 0: the
    count changes how sums are split, so a resumed run must repeat it to end bit for bit."""
    if config.train.threads:
        return config
    threads, why = choose_threads()
    if why and group.is_main:
        note(why)
    return dataclasses.replace(config, train=dataclasses.replace(config.train, threads=threads))


def train_state(session: Session, elapsed_s: float) -> dict[str, Any]:
    """Everything besides the saved weights that exact resumption needs; tensors and numbers
    only. Where the saved weights are an average (optim.ema), the trained ones too."""
    state = {
        "step": session.step,
        "best_val_loss": session.best_val_loss,
        "elapsed_s": elapsed_s,
        "training_s": session.training_s,
        "schedule": session.schedule.state_dict(),  # a time limit's plan so far
        "optimizer": session.optimizer.state_dict(),
        "batch_generator": session.generator.get_state(),
        "rng": rng_states(session.device),
    }
    if session.average is not None:
        state["trained_weights"] = session.model.state_dict()
        state["averaged_steps"] = session.average.n_averaged
    return state


def restore_train_state(session: Session, state: dict[str, Any]) -> None:
    """Put a checkpoint's training state back; the model holds the checkpoint's weights."""
    session.step = int(state["step"])
    session.best_val_loss = float(state["best_val_loss"])
    session.elapsed_s = float(state["elapsed_s"])
    session.training_s = float(state.get("training_s", state["elapsed_s"]))
    if session.budget is not None and "schedule" in state:
        session.schedule.load_state_dict(state["schedule"])
    session.optimizer.load_state_dict(state["optimizer"])
    session.generator.set_state(state["batch_generator"])
    set_rng_states(state["rng"])
    if session.average is not None:  # the checkpoint's weights are the average
        session.average.module.load_state_dict(session.model.state_dict())
        session.model.load_state_dict(state["trained_weights"])
        session.average.n_averaged.copy_(state["averaged_steps"])


def autocast(session: Session) -> contextlib.AbstractContextManager:
    if session.dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(session.device.type, dtype=session.dtype)


def evaluate(session: Session, stop: Callable[[], bool] = never) -> dict[str, float]:
    """The periodic estimate on fixed batches; after the last step also the whole val split.
    `stop` is asked before each batch; True abandons it (EvaluationStopped)."""
    metrics = estimate(session, stop)
    cfg = session.config
    if cfg.train.whole_val and session.step == cfg.train.steps:
        metrics.update(score_whole_val(session, stop))
    return metrics


def score_whole_val(session: Session, stop: Callable[[], bool] = never) -> dict[str, float]:
    """Every val token predicted once (`whole_val_loss`, `whole_val_bpb`), or on a split
    longer than train.whole_val_tokens evenly spaced windows of it (`sampled_val_loss`,
    `_bpb`, `_stderr`, `_tokens`): the end of a run stays short on a large corpus."""
    cfg, val = session.config, session.data.val
    tokens_per_byte = session.data.tokens_per_byte("val")
    model, group = session.saved_model, session.group
    block_size, batch_size, device = cfg.model.block_size, cfg.train.batch_size, session.device
    with autocast(session):
        if len(val) - 1 <= cfg.train.whole_val_tokens:
            rows = eval_rows(session)  # the figure does not depend on it
            loss = split_loss(model, val, block_size, rows, device, group=group, stop=stop)
            return {
                "whole_val_loss": loss,
                "whole_val_bpb": bits_per_byte(loss, tokens_per_byte),
                "whole_val_tokens": len(val) - 1,  # every token but the first, which has no context
            }
        sampled = sampled_split_loss(  # its batches are its samples: the training batch size
            model, val, block_size, batch_size, device,
            max_tokens=cfg.train.whole_val_tokens, group=group, stop=stop,
        )  # fmt: skip
    return {
        "sampled_val_loss": sampled.loss,
        "sampled_val_bpb": bits_per_byte(sampled.loss, tokens_per_byte),
        "sampled_val_stderr": sampled.stderr,
        "sampled_val_tokens": sampled.tokens,
    }


def eval_rows(session: Session) -> int:
    """Windows per evaluation forward pass: train.eval_rows, or as many as pay."""
    cfg = session.config
    if cfg.train.eval_rows:
        return cfg.train.eval_rows
    return rows_per_forward(
        cfg.model.block_size, session.data.tokenizer.vocab_size, at_least=cfg.train.batch_size
    )


def estimate(session: Session, stop: Callable[[], bool] = never) -> dict[str, float]:
    splits = {"train": session.data.train, "val": session.data.val}
    # a zero-initialised head at step 0: no batch can tell more than ln(vocabulary)
    if (uniform := session.saved_model.uniform_loss()) is not None:
        losses = {f"{split}_loss": uniform for split in splits}
    else:
        losses = _estimate_loss(session, splits, stop)
    data = session.data
    return {
        **losses,
        **{
            f"{split}_bpb": bits_per_byte(losses[f"{split}_loss"], data.tokens_per_byte(split))
            for split in splits
        },
    }


def _estimate_loss(
    session: Session, splits: dict[str, Any], stop: Callable[[], bool]
) -> dict[str, float]:
    cfg = session.config
    with autocast(session):
        return estimate_loss(
            session.saved_model,  # eager: a compiled model would also compile for inference
            splits,
            n_batches=cfg.train.eval_batches,
            batch_size=cfg.train.batch_size,
            block_size=cfg.model.block_size,
            seed=cfg.train.seed,
            device=session.device,
            group=session.group,
            stop=stop,
            batches_per_forward=max(1, eval_rows(session) // cfg.train.batch_size),
        )


class StepResult(NamedTuple):
    loss: float  # the mean over the step's micro-batches
    grad_norm: float  # before clipping
    seconds: float  # the step's wall time


def train_step(session: Session) -> StepResult:
    """One optimizer step over `grad_accum_steps` micro-batches.

    A non-finite loss or gradient norm raises TrainingDiverged before the update.
    """
    start = time.perf_counter()
    cfg = session.config
    accum = cfg.train.grad_accum_steps
    session.schedule.set_for(session.step)
    total = torch.zeros((), device=session.device)
    group = session.group
    for micro_step in range(accum):
        x, y = random_batch(
            session.data.train,
            cfg.train.batch_size,
            cfg.model.block_size,
            session.generator,
            group=group,
        )
        with autocast(session), _gradient_sync(session, micro_step == accum - 1):
            _, loss = session.forward(x.to(session.device), y.to(session.device))
            # the mean over all micro-batches (DDP then averages the ranks): one big batch
            (loss / accum).backward()
        total += loss.detach()
    max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
    grad_norm = nn.utils.clip_grad_norm_(session.model.parameters(), max_norm).item()
    mean_loss = (total / accum).item()
    if not (math.isfinite(mean_loss) and math.isfinite(grad_norm)):
        session.optimizer.zero_grad(set_to_none=True)  # the weights stay as they were
        lr = session.optimizer.param_groups[0]["lr"]
        raise TrainingDiverged(session.step + 1, mean_loss, grad_norm, lr)
    session.optimizer.step()
    session.optimizer.zero_grad(set_to_none=True)
    if session.average is not None:
        session.average.update_parameters(session.model)
    session.step += 1
    took = time.perf_counter() - start
    session.training_s += took
    return StepResult(mean_loss, grad_norm, took)


def advance(session: Session) -> StepResult:
    """One step of the run as `fit` takes it: `train_step`, then, in a time-limited run,
    the plan of its length from the step's time."""
    result = train_step(session)
    if session.budget is not None:
        plan_length(session, result.seconds)
    return result


def plan_length(session: Session, step_s: float) -> None:
    """Plan the run's length from the time limit and the recent speed (budget.py); at its
    end, the length becomes the config's train.steps."""
    budget = session.budget
    assert budget is not None
    budget.record(step_s)
    speed = budget.seconds_per_step() if session.step % REPLAN_EVERY == 0 else None
    if speed is not None:
        group, device = session.group, session.device  # every rank makes the same plan
        speed = all_mean(speed, group, device)
        trained_s = all_mean(session.training_s, group, device)
        planned = budget.plan(session.step, trained_s, speed)
        session.schedule.change_length(planned, session.step)
    if session.step >= session.planned_steps:
        train = dataclasses.replace(session.config.train, steps=session.step)
        session.config = dataclasses.replace(session.config, train=train)
        session.budget = None


def _gradient_sync(session: Session, last_micro_step: bool) -> contextlib.AbstractContextManager:
    """DDP averages gradients over the group on the last micro-step only."""
    if session.group.enabled and not last_micro_step:
        return session.forward.no_sync()  # type: ignore[attr-defined]  # forward is the DDP wrapper here
    return contextlib.nullcontext()


class TrainingDiverged(UserError):
    """The loss or the gradient norm stopped being a finite number."""

    def __init__(self, step: int, loss: float, grad_norm: float, lr: float) -> None:
        super().__init__(
            f"training diverged at step {step} (loss {loss}, gradient norm {grad_norm}, "
            f"lr {lr:.3g}); stopped before the update, checkpoints hold the last good weights; "
            "try a lower --optim.lr or --optim.grad_clip"
        )


PLAIN_PROGRESS_EVERY_S = 15.0  # when output goes to a file: a line this often, at most


def fit(session: Session, run_dir: Path, out: TextIO, until: int | None = None) -> dict[str, float]:
    """The training loop: steps, periodic evaluation and checkpoints, metrics.jsonl.

    A SIGINT or SIGTERM ends it at the next step boundary with a checkpoint; one during an
    evaluation abandons it at its next batch and saves the step without it. Progress shows
    as a bar on a terminal, and as a plain line now and then when `out` is not one. A time
    limit's plan (budget.py) sets the bar's length as it goes, and its end shows as a line.
    """
    cfg = session.config.train  # its steps may change: session.planned_steps is the length
    is_main = session.group.is_main
    log = MetricsLog(
        RunDir(run_dir).metrics, session.elapsed_s, enabled=is_main, tensorboard=cfg.tensorboard
    )
    bar = tqdm(
        total=session.planned_steps,
        initial=session.step,
        desc="train",
        unit="step",
        disable=None if is_main else True,  # None: only on a terminal
    )
    plain = None
    if is_main and not _is_terminal(out):
        plain = PlainProgress(out, session.planned_steps, log.elapsed())
    meter = Throughput(cfg.batch_size * cfg.grad_accum_steps * session.config.model.block_size)
    session.model.train()
    last: dict[str, float] = {}
    fault_step = planned_fault(session.group)  # None unless a test asks for a crash
    stop_request.listen()  # the command line listens from its start; a library caller here

    def stop_wanted() -> bool:  # the same answer on every rank
        return any_rank(stop_request.signum is not None, session.group, session.device)

    def evaluate_and_save() -> dict[str, float]:
        """An evaluation a stop abandons: the step's checkpoint is written without it."""
        try:
            return _evaluate_and_save(session, run_dir, log, out, stop_wanted)
        except EvaluationStopped:
            _save(session, run_dir, last, log.elapsed(), is_best=False)
            signum = stop_request.take() or signal.SIGTERM
            raise TrainingInterrupted(session.step, signum, run_dir) from None

    try:
        with contextlib.closing(log), bar:
            if session.step == 0:
                last = evaluate_and_save()
            while session.step < session.planned_steps and (until is None or session.step < until):
                planning = session.budget is not None
                loss, grad_norm, _ = advance(session)
                if session.step == fault_step:
                    crash(session.group, session.step)
                meter.steps += 1
                bar.total = session.planned_steps
                if plain is not None:
                    plain.total = session.planned_steps
                if planning and session.budget is None:
                    _report_time_limit(session, run_dir, bar, out)
                bar.update(1)
                step = session.step
                last_step = step == session.planned_steps
                if step % cfg.log_interval == 0 or last_step:
                    _log_step(session, log, bar, meter, loss, grad_norm)
                if plain is not None:
                    plain.update(step, loss, log.elapsed())
                saved = step % cfg.eval_interval == 0 or last_step
                if saved:
                    last = evaluate_and_save()
                    meter.restart()  # keep evaluation out of tokens/s
                if stop_wanted():
                    if not saved:
                        _save(session, run_dir, last, log.elapsed(), is_best=False)
                    signum = stop_request.take() or signal.SIGTERM  # another rank's signal
                    raise TrainingInterrupted(step, signum, run_dir)
    finally:
        stop_request.release()  # from here on Ctrl-C interrupts at once (plot, sample)
    return last


def _report_time_limit(session: Session, run_dir: Path, bar: tqdm, out: TextIO) -> None:
    """A time-limited run reached its planned end: say so, and write its length into the
    run's config.json."""
    cfg = session.config.train
    if session.group.is_main:
        RunDir(run_dir).write_config(session.config)
        bar.write(
            f"time limit {cfg.time_limit:g} s: {cfg.steps:,} steps in {session.training_s:.1f} s "
            f"of training ({1000 * session.training_s / max(1, cfg.steps):.0f} ms a step)",
            file=out,
        )


def _is_terminal(out: TextIO) -> bool:
    isatty = getattr(out, "isatty", None)
    return bool(isatty and isatty())


class PlainProgress:
    """A progress line every PLAIN_PROGRESS_EVERY_S seconds, for output that is a file or a
    pipe, where tqdm's bar stays silent."""

    def __init__(self, out: TextIO, total: int, start_s: float) -> None:
        self.out, self.total = out, total
        self.last_s = start_s

    def update(self, step: int, loss: float, elapsed_s: float) -> None:
        if elapsed_s - self.last_s < PLAIN_PROGRESS_EVERY_S or step == self.total:
            return
        self.last_s = elapsed_s
        print(
            f"step {step}/{self.total} ({100 * step / self.total:.0f}%): loss {loss:.4f}, "
            f"{elapsed_s:.0f} s",
            file=self.out,
            flush=True,
        )


def _log_step(
    session: Session, log: MetricsLog, bar: tqdm, meter: Throughput, loss: float, grad_norm: float
) -> None:
    tokens_per_s = meter.rate() * session.group.world_size
    loss = all_mean(loss, session.group, session.device)
    lr = session.optimizer.param_groups[0]["lr"]
    record = {"loss": round(loss, 6), "lr": lr, "grad_norm": round(grad_norm, 6)}
    log.write(session.step, **record, tokens_per_s=round(tokens_per_s, 1))
    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}")
    meter.restart()


def _evaluate_and_save(
    session: Session, run_dir: Path, log: MetricsLog, out: TextIO, stop: Callable[[], bool]
) -> dict[str, float]:
    metrics = {k: round(v, 6) for k, v in evaluate(session, stop).items()}
    log.write(session.step, **metrics)
    train_loss, val_loss = metrics["train_loss"], metrics["val_loss"]
    tqdm.write(
        f"step {session.step}: train loss {train_loss:.4f}, val loss {val_loss:.4f}", file=out
    )
    is_best = val_loss < session.best_val_loss
    if is_best:
        session.best_val_loss = val_loss
    _save(session, run_dir, metrics, log.elapsed(), is_best)
    return metrics


def _save(
    session: Session, run_dir: Path, metrics: dict[str, float], elapsed_s: float, is_best: bool
) -> None:
    """A resumable checkpoint of this step, a copy as `best` if it is, and pruning.

    Rank 0 writes; the other ranks wait until it is done.
    """
    cfg, step = session.config, session.step
    if session.group.is_main:
        about: dict[str, Any] = {
            "step": step,
            "config": cfg,
            "tokenizer": session.data.tokenizer,
            "metrics": metrics,
        }
        state = train_state(session, elapsed_s)
        model = session.saved_model
        save_checkpoint(step_folder(run_dir, step), model, train_state=state, **about)
        if is_best:
            save_checkpoint(RunDir(run_dir).best, model, **about)
        prune_checkpoints(run_dir, cfg.train.keep_checkpoints)
    barrier(session.group)
