"""Files written whole: temporary files and folders renamed into place, and output paths
checked before the work that fills them.

`tempfile` creates them readable by their owner alone (0600 and 0700), which is right while
they are being written but wrong for what they become: a cached corpus or a checkpoint that
other users (or a web server) may read. Once renamed, they carry the permissions the user's
umask gives any new file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import platformdirs

from tinygpt.errors import UserError

HOME_VARIABLE = "TINYGPT_HOME"


def cache_home() -> Path:
    """Where downloads, prepared data and tokenizer files live: $TINYGPT_HOME, else the
    user's cache folder."""
    return Path(os.environ.get(HOME_VARIABLE) or platformdirs.user_cache_dir("tinygpt"))


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it; put it back at once
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    return 0o666 & ~_umask()


def new_dir_mode() -> int:
    return 0o777 & ~_umask()


def temp_file(parent: Path, prefix: str) -> Path:
    """An empty file in `parent` with the mode a new file gets from the umask."""
    fd, name = tempfile.mkstemp(dir=parent, prefix=prefix)
    os.fchmod(fd, new_file_mode())
    os.close(fd)
    return Path(name)


def temp_dir(parent: Path, prefix: str) -> Path:
    """An empty folder in `parent` with the mode a new folder gets from the umask."""
    path = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    path.chmod(new_dir_mode())
    return path


def check_new_folder(out: Path, what: str) -> None:
    """Fail at once unless `out` is absent or an empty folder."""
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise UserError(f"{out} exists and is not an empty folder; {what} into a new one")


@contextlib.contextmanager
def folder_written_whole(out: Path) -> Iterator[Path]:
    """A hidden folder beside `out` to fill; on success it becomes `out` (absent or empty,
    see check_new_folder), on failure it is removed: a half-written `out` never appears."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(out.parent, f".{out.name}.tmp-")
    try:
        yield tmp
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_writable(path: Path) -> None:
    """Fail at once if a file could not be written to `path` once the work is done."""
    folder = path.parent
    if not folder.is_dir():
        raise UserError(f"cannot write {path}: no such directory {folder}")
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a directory")
    target = path if path.exists() else folder
    if not os.access(target, os.W_OK):
        raise UserError(f"cannot write {path}: {target} is read-only (permissions or file system)")
