"""Checkpoints: the only way model state goes to and comes from disk.

A run directory (rundir.py) keeps its checkpoints in `checkpoints/`: `step-NNNNNNNN/` (the
newest few) and `best/` (lowest val loss). A checkpoint is a folder of `model.safetensors`
(weights; loading never unpickles code), `meta.json` (format, step, config, tokenizer,
metrics) and `train_state.pt` (optimizer and RNG states for exact resume, tensors only, read
with `weights_only=True`). It is written in a hidden temporary folder, fsynced and renamed
into place, so a crash at any instant leaves every complete checkpoint loadable;
half-written ones are never picked up.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from tinygpt.config import RunConfig
from tinygpt.errors import UserError, first_line
from tinygpt.files import temp_dir
from tinygpt.models import LanguageModel, build_model
from tinygpt.rundir import (
    CHECKPOINT_NAME,
    META_FILE,
    TRAIN_STATE_FILE,
    WEIGHTS_FILE,
    RunDir,
    find_checkpoint,
    is_complete,
    list_checkpoints,
    read_meta,
)
from tinygpt.tokenizers import Tokenizer, tokenizer_from_dict

FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    path: Path
    step: int
    config: RunConfig
    tokenizer: Tokenizer
    model: LanguageModel
    metrics: dict[str, Any]


def save_checkpoint(
    folder: Path,
    model: nn.Module,
    *,
    step: int,
    config: RunConfig,
    tokenizer: Tokenizer,
    metrics: dict[str, Any],
    train_state: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint folder `folder` atomically (replacing an older one) and return it.

    Non-finite weights are refused, and a failed write (full disk, read-only folder) leaves
    the checkpoints already there as they were. The writers do not all fail with OSError
    (safetensors raises its own error; torch.save a RuntimeError), so the training state is
    serialised in memory and written as plain bytes, and safetensors' error is caught too.
    """
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise UserError(f"refusing to save step {step}: the weights hold NaN or infinity")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_dir(folder.parent, ".tmp-")
        try:
            safetensors.torch.save_model(model, str(tmp / WEIGHTS_FILE))
            meta = {
                "format": FORMAT_VERSION,
                "step": step,
                "config": config.to_dict(),
                "tokenizer": tokenizer.to_dict(),
                "metrics": metrics,
            }
            (tmp / META_FILE).write_text(json.dumps(meta, ensure_ascii=False, indent=1))
            if train_state is not None:
                buffer = io.BytesIO()
                torch.save(train_state, buffer)
                (tmp / TRAIN_STATE_FILE).write_bytes(buffer.getbuffer())
            _fsync_tree(tmp)
            _swap_into_place(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return folder
    except (OSError, safetensors.SafetensorError) as exc:
        reason = _write_error(exc)
        raise UserError(f"cannot write a checkpoint in {folder.parent}: {reason}") from None


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Rename a finished folder to its name; an older one of that name goes only after."""
    old = final.with_name(f".old-{final.name}")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    _fsync_dir(final.parent)
    if old.exists():
        _remove(old)


def clean_checkpoints(run_dir: Path) -> None:
    """Remove what an interrupted save or prune left: temporary and half-deleted folders, and
    a swapped-out old copy (put back if its replacement never arrived)."""
    parent = RunDir(run_dir).checkpoints
    if not parent.is_dir():
        return
    for path in parent.iterdir():
        if path.name.startswith((".tmp-", ".trash-")):
            shutil.rmtree(path, ignore_errors=True)
        elif CHECKPOINT_NAME.match(path.name) and not is_complete(path):
            shutil.rmtree(path, ignore_errors=True)  # not a checkpoint, only its name
        elif path.name.startswith(".old-"):
            original = parent / path.name.removeprefix(".old-")
            if original.exists():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.rename(original)


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` step checkpoints (`best` is not one of them)."""
    for folder in list_checkpoints(run_dir)[:-keep]:
        _remove(folder)


def _remove(folder: Path) -> None:
    """Delete a folder so that a crash midway never leaves half of it under its name:
    rename it out of the way first (one atomic step), then delete."""
    trash = folder.with_name(f".trash-{folder.name}")
    folder.rename(trash)
    shutil.rmtree(trash)


def load_train_state(folder: Path) -> dict[str, Any]:
    """Optimizer and RNG states of a checkpoint; tensors and plain data only, never code."""
    path = folder / TRAIN_STATE_FILE
    if not path.is_file():
        raise UserError(f"checkpoint {folder} has no training state to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        # what a refused, truncated or foreign pickle raises: the file is not ours
        raise UserError(f"refusing to load {path}: {str(exc).splitlines()[0]}") from None


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with path.open("rb") as f:
            os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(path: Path) -> Checkpoint:
    """Load a checkpoint (or a run's newest one): config, tokenizer and model weights."""
    folder = find_checkpoint(path)
    try:
        meta = read_meta(folder)
        config = RunConfig.from_dict(meta["config"])
        tokenizer = tokenizer_from_dict(meta["tokenizer"])
        step, metrics = int(meta["step"]), dict(meta.get("metrics", {}))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"cannot read checkpoint {folder}: {exc}") from None
    if meta.get("format") != FORMAT_VERSION:
        raise UserError(f"checkpoint {folder} has unsupported format {meta.get('format')!r}")
    model = build_model(config.model, tokenizer.vocab_size)
    weights = folder / WEIGHTS_FILE
    try:
        safetensors.torch.load_model(model, str(weights), device="cpu")
    except RuntimeError as exc:  # names or shapes differ from what the config builds
        raise UserError(
            f"checkpoint {folder} does not match its config: {first_line(exc)}"
        ) from None
    except (OSError, safetensors.SafetensorError) as exc:
        raise UserError(f"checkpoint {folder}: weights do not load ({first_line(exc)})") from None
    return Checkpoint(folder, step, config, tokenizer, model, metrics)


def _write_error(exc: Exception) -> str:
    """The reason a write failed: OSError's text, or the one inside safetensors' message
    (`IoError(Os { code: 28, ..., message: "No space left on device" })`)."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    found = re.search(r'message: "([^"]+)"', str(exc))
    return found.group(1) if found else first_line(exc)


# what an export (transformers, ONNX) writes of the run for tinygpt to read back: its
# config and tokenizer; other readers of the folder ignore it
EXPORT_DESCRIPTION = "tinygpt.json"


def write_export_description(folder: Path, checkpoint: Checkpoint) -> None:
    own = {"config": checkpoint.config.to_dict(), "tokenizer": checkpoint.tokenizer.to_dict()}
    (folder / EXPORT_DESCRIPTION).write_text(json.dumps(own, indent=1), encoding="utf-8")


def read_export_description(folder: Path) -> tuple[RunConfig, Tokenizer]:
    """The model and data config and the tokenizer an export wrote (one line if unreadable)."""
    path = folder / EXPORT_DESCRIPTION
    try:
        own = json.loads(path.read_text(encoding="utf-8"))
        config = RunConfig.from_dict({k: own["config"][k] for k in ("model", "data")})
        return config, tokenizer_from_dict(own["tokenizer"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"cannot read {path}: {first_line(exc)}") from None
