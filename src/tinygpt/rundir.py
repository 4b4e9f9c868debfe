"""The run directory: the one place where its layout is spelled.

```
runs/NAME/
  config.json             the resolved config
  tokenizer.json          the tokenizer (its kind's JSON; every checkpoint holds it too)
  metrics.jsonl           one JSON object per line (training/metrics.py writes them)
  metrics-earlier.jsonl   what a run logged before it had to start again from step 0
  loss.png                the loss curves, drawn at the end
  checkpoints/            step-NNNNNNNN/ and best/ (checkpoint.py writes them)
  .writer.lock            held by the one process writing the run (`writing`), while it does
```

Everything else asks a `RunDir` for these paths; nothing else writes their names.

One run, one writer: whoever writes a run directory (a new run, a resumed or overwritten
one, an import) holds an OS lock on its `.writer.lock` for as long as it writes. The lock
dies with its process, so a killed run leaves none behind; a second writer is refused at
once, told who holds it. Readers (sample, eval, serve, ...) never take it: they read the
newest complete checkpoint, which is written whole before it gets its name.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinygpt.config import RunConfig
from tinygpt.errors import UserError, note
from tinygpt.tokenizers import Tokenizer, save_tokenizer

# A checkpoint folder (checkpoint.py writes and reads them): what is in it, and the name of a
# step's folder in checkpoints/.
WEIGHTS_FILE = "model.safetensors"
META_FILE = "meta.json"  # format, step, config, tokenizer, metrics
TRAIN_STATE_FILE = "train_state.pt"  # optimizer and RNG states, for exact resume
CHECKPOINT_NAME = re.compile(r"^step-(\d{8,})$")


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def tokenizer(self) -> Path:
        return self.path / "tokenizer.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def earlier_metrics(self) -> Path:
        return self.path / "metrics-earlier.jsonl"

    @property
    def loss_plot(self) -> Path:
        return self.path / "loss.png"

    @property
    def writer_lock(self) -> Path:
        return self.path / ".writer.lock"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def best(self) -> Path:
        """The checkpoint with the lowest val loss so far."""
        return self.checkpoints / "best"

    def exists(self) -> bool:
        """Whether this is a tinygpt run directory (it has its config)."""
        return self.config.is_file()

    def is_empty(self) -> bool:
        """Whether the folder is missing or holds nothing but a writer's lock."""
        if not self.path.exists():
            return True
        return self.path.is_dir() and all(p == self.writer_lock for p in self.path.iterdir())

    def clear(self) -> None:
        """Delete everything in the folder but the writer's lock (--overwrite)."""
        for path in self.path.iterdir():
            if path == self.writer_lock:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()

    def adopt(self, folder: Path) -> None:
        """Move a run written whole in `folder` into this (empty) one, config.json last: a
        folder is a run directory once its config is there."""
        entries = sorted(folder.iterdir(), key=lambda p: p.name == self.config.name)
        for entry in entries:
            entry.rename(self.path / entry.name)
        folder.rmdir()

    def read_config(self) -> RunConfig:
        try:
            return RunConfig.from_dict(json.loads(self.config.read_text("utf-8")))
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read {self.config}: {exc}") from None

    def write_config(self, config: RunConfig) -> None:
        """config.json, replaced atomically so that a crash never leaves half of it."""
        tmp = self.path / ".config.json.tmp"
        tmp.write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
        tmp.replace(self.config)

    def write_tokenizer(self, tokenizer: Tokenizer) -> None:
        tmp = self.path / ".tokenizer.json.tmp"
        save_tokenizer(tokenizer, tmp)
        tmp.replace(self.tokenizer)

    def __str__(self) -> str:
        return str(self.path)


def is_run_dir(path: Path) -> bool:
    return RunDir(path).exists()


def why_not_a_run(path: Path) -> str:
    """Why `path` is not a run directory, and where runs are: for a user who mistyped it."""
    if not path.exists():
        near = [p for p in _runs_beside(path) if p != path]
        seen = f"; run directories here: {', '.join(str(p) for p in near[:8])}" if near else ""
        return f"{path} does not exist{seen}"
    if not path.is_dir():
        return f"{path} is a file, not a run directory"
    return (
        f"{path} holds no {RunDir(path).config.name}: it is not a tinygpt run directory (a "
        "run holds config.json, tokenizer.json and checkpoints/)"
    )


def _runs_beside(path: Path) -> list[Path]:
    """The run directories next to `path` and in ./runs, newest first."""
    folders = {path.parent, Path("runs")}
    runs = {p for f in folders if f.is_dir() for p in f.iterdir() if RunDir(p).exists()}
    return sorted(runs, key=lambda p: p.stat().st_mtime, reverse=True)


def step_folder(run_dir: Path, step: int) -> Path:
    """Where a run keeps the checkpoint of a step."""
    return RunDir(run_dir).checkpoints / f"step-{step:08d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary folders are skipped)."""
    parent = RunDir(run_dir).checkpoints
    if not parent.is_dir():
        return []
    found = [p for p in parent.iterdir() if CHECKPOINT_NAME.match(p.name) and is_complete(p)]
    return sorted(found, key=lambda p: int(p.name.removeprefix("step-")))


def is_complete(folder: Path) -> bool:
    return (folder / META_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


def find_checkpoint(path: Path) -> Path:
    """A checkpoint folder itself, or the newest checkpoint of a run directory (its best one,
    with a note, when no step checkpoint is left)."""
    if not path.exists():
        raise UserError(f"no such run directory: {path}")
    if is_complete(path):
        return path
    found = list_checkpoints(path)
    if found:
        return found[-1]
    best = RunDir(path).best
    if is_complete(best):
        note(f"{path} has no step checkpoint left; using its best one ({best})")
        return best
    raise UserError(f"{path} is not a tinygpt run directory (it holds no checkpoint)")


def read_meta(folder: Path) -> dict[str, Any]:
    """A checkpoint folder's meta.json: format, step, config, tokenizer, metrics."""
    return json.loads((folder / META_FILE).read_text(encoding="utf-8"))


def is_finished(run_dir: Path) -> bool:
    """Whether the newest complete checkpoint of a run is its last step."""
    if not is_run_dir(run_dir) or not list_checkpoints(run_dir):
        return False
    _, meta = newest_checkpoint(run_dir)
    return meta["step"] >= meta["config"]["train"]["steps"]


def newest_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The newest complete checkpoint folder and its meta.json."""
    folder = find_checkpoint(run_dir)
    return folder, read_meta(folder)


def check_run_dir(run_dir: Path, overwrite: bool) -> None:
    """A new run needs an empty place; --overwrite replaces an earlier run, nothing else."""
    if RunDir(run_dir).is_empty():
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


@dataclass(frozen=True)
class Writer:
    """The process that holds a run directory's lock, as it wrote itself into the lock file."""

    pid: int
    host: str
    since: str  # local time, to the second

    def describe(self) -> str:
        return f"PID {self.pid} on {self.host}, since {self.since}"


class RunDirBusy(UserError):
    """Another process is writing the run directory."""

    def __init__(self, run_dir: Path, writer: Writer | None) -> None:
        who = writer.describe() if writer else "a process that has not said who it is yet"
        super().__init__(
            f"{run_dir} is being written by another tinygpt process ({who}); wait for it to "
            "end, or stop it, before writing this run again (reading it works meanwhile)"
        )


@contextlib.contextmanager
def writing(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir`'s writer lock while the block runs, creating the folder if need be.

    Another writer raises RunDirBusy at once and changes nothing. Folders created here are
    removed again if the block leaves nothing else in them (a run that failed before it
    wrote anything); otherwise the lock file goes when the block ends.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir} exists and is not a folder")
    created = _missing_folders(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = RunDir(run_dir)
    fd = _lock(paths)
    try:
        yield
    finally:
        try:
            if created and paths.is_empty():
                paths.writer_lock.unlink()
                for folder in created:  # the deepest first
                    with contextlib.suppress(OSError):  # another run's folder meanwhile
                        folder.rmdir()
            else:
                paths.writer_lock.unlink(missing_ok=True)
        finally:
            os.close(fd)  # releases the lock


def writer_of(run_dir: Path) -> Writer | None:
    """The process writing `run_dir` now, if one is (None: nobody holds its lock)."""
    lock = RunDir(run_dir).writer_lock
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_writer(fd) or Writer(0, "?", "?")
    else:
        return None  # closing the file releases the shared lock just taken
    finally:
        os.close(fd)


def _missing_folders(path: Path) -> list[Path]:
    """`path` and those of its parents that do not exist yet, the deepest first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def _lock(paths: RunDir) -> int:
    """An open descriptor of the lock file, exclusively locked, with this process named in
    it. The file may be removed by a writer that ends while another opens it: the lock is
    taken again until it is on the file that bears the name."""
    while True:
        fd = os.open(paths.writer_lock, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_lock(fd):
            writer = _read_writer(fd)
            os.close(fd)
            raise RunDirBusy(paths.path, writer)
        try:
            same = os.stat(paths.writer_lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    since = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": since}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
    return fd


def _try_lock(fd: int, tries: int = 5) -> bool:
    """Lock exclusively; a few tries, since `writer_of` holds a shared lock for a moment."""
    for attempt in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt < tries - 1:
                time.sleep(0.02)
    return False


def _read_writer(fd: int) -> Writer | None:
    try:
        about = json.loads(os.pread(fd, 4096, 0))
        return Writer(int(about["pid"]), str(about["host"]), str(about["since"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # the holder has not written itself in yet
