"""The exceptions the command line turns into one line on stderr and an exit status.

UserError (exit status 2) is for mistakes a user can make: a bad file, option or prompt.
TrainingInterrupted (exit status 128 + the signal) is a run stopped by a signal after it
saved a checkpoint. Anything else that escapes is a bug in tinygpt and keeps its traceback.
"""

import signal
from pathlib import Path


class UserError(Exception):
    """A problem with the user's input, explained in one line."""


class TrainingInterrupted(Exception):
    """A signal stopped the run after a checkpoint was written; it can be resumed."""

    def __init__(self, step: int, signum: int, run_dir: Path) -> None:
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name} at step {step}; checkpoint saved; "
            f"resume with: tinygpt train --resume {run_dir}"
        )
        self.signum = signum
