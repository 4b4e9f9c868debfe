"""The exceptions the command line turns into one line on stderr and an exit status.

UserError (exit status 2) is for mistakes a user can make: a bad file, option or prompt.
Interrupted (exit status 128 + the signal) is a stop asked for by a signal and carried out
cleanly: TrainingInterrupted after a checkpoint was saved, or before training began, when
nothing was written. Anything else that escapes is a bug in tinygpt and keeps its traceback.
A note is one line on stderr that stops nothing.
"""

import signal
import sys
from pathlib import Path


def note(message: str) -> None:
    """One line on stderr about something worth knowing that does not stop anything."""
    print(f"tinygpt: note: {message}", file=sys.stderr)


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
