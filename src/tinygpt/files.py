"""Temporary files and folders that are renamed into place once written whole.

`tempfile` creates them readable by their owner alone (0600 and 0700), which is right while
they are being written but wrong for what they become: a cached corpus or a checkpoint that
other users (or a web server) may read. Once renamed, they carry the permissions the user's
umask gives any new file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


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
