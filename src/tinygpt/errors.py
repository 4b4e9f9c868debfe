"""The exceptions the command line turns into one line on stderr and an exit status.

UserError (exit status 2) is for mistakes a user can make: a bad file, option or prompt.
Interrupted (exit status 128 + the signal) is a stop asked for by a signal and carried out
cleanly: TrainingInterrupted after a checkpoint was saved, or before training began, when
nothing was written. Anything else that escapes is a bug in tinygpt and keeps its traceback.
A note is one line on stderr that stops nothing.
"""

import difflib
import signal
import sys
from collections.abc import Iterable
from pathlib import Path


def note(message: str) -> None:
    """One line on stderr about something worth knowing that does not stop anything."""
    print(f"tinygpt: note: {message}", file=sys.stderr)


def unknown_name(what: str, name: str, known: Iterable[str]) -> str:
    """`unknown preset 'cpu-fst'; did you mean cpu-fast?`: the nearest known names, or all
    of them where none is near."""
    names = [str(k) for k in known]
    close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.6)
    if close:
        return f"unknown {what} {name!r}; did you mean {' or '.join(close)}?"
    return f"unknown {what} {name!r} (known: {', '.join(names)})"


def first_line(exc: Exception) -> str:
    """What an exception says, in one line (its type where it says nothing)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class UserError(Exception):
    """A problem with the user's input, explained in one line."""


class Interrupted(Exception):
    """A signal stopped tinygpt at a point where nothing is left half-done."""

    def __init__(self, signum: int, what: str = "before training started; nothing was written"):
        super().__init__(f"stopped by {signal.Signals(signum).name} {what}")
        self.signum = signum


class TrainingInterrupted(Interrupted):
    """A signal stopped the run after a checkpoint was written; it can be resumed."""

    def __init__(self, step: int, signum: int, run_dir: Path) -> None:
        super().__init__(
            signum,
            f"at step {step}; checkpoint saved; resume with: tinygpt train --resume {run_dir}",
        )
