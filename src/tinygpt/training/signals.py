"""How a run stops on purpose: signals turned into a clean stop, and injected faults."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from tinygpt.errors import Interrupted

if TYPE_CHECKING:  # importing torch here would delay `listen` until torch is loaded
    from tinygpt.runtime import Distributed


class StopRequest:
    """The first SIGINT or SIGTERM asks a run to stop at the next step boundary; the handlers
    then go back to the defaults, so a second signal ends the process at once.

    The command line starts listening before it imports torch: Python's own handler raises
    KeyboardInterrupt wherever the signal lands, and inside torch's import that can be
    swallowed or abort the process. A signal caught before training starts stops the run
    before it writes anything.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def listen(self) -> None:
        """Catch the signals from now on (again if already listening: a no-op)."""
        if self.previous or threading.current_thread() is not threading.main_thread():
            return
        self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = self.signum or signum
        for s in self.SIGNALS:
            signal.signal(s, signal.SIG_DFL)

    def release(self) -> None:
        """Give the signals back to the handlers they had before `listen`."""
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous = {}

    def take(self) -> int | None:
        """The signal that asked for a stop (None: none did), which is then forgotten."""
        signum, self.signum = self.signum, None
        return signum


# Signal handlers belong to the process, and so does the request they record.
stop_request = StopRequest()


def stop_if_requested() -> None:
    """End here, before a run writes anything, if a signal has asked for a stop."""
    signum = stop_request.take()
    if signum is not None:
        raise Interrupted(signum)


def planned_fault(group: Distributed) -> int | None:
    """TINYGPT_FAULT_STEP=RANK:STEP makes that rank crash after that step, once (not after a
    torchrun restart): a switch for testing recovery, off unless the variable is set.
    Returns the step at which this process is to crash, or None; read once per run."""
    from tinygpt.runtime import restart_count  # here: importing torch early would delay listen

    fault = os.environ.get("TINYGPT_FAULT_STEP")
    if not fault or restart_count() > 0:
        return None
    rank, step = (int(part) for part in fault.split(":"))
    return step if rank == group.rank else None


def crash(group: Distributed, step: int) -> None:
    print(f"tinygpt: injected fault on rank {group.rank} at step {step}", file=sys.stderr)
    os._exit(17)
