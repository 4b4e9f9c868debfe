"""How a run stops on purpose: signals turned into a clean stop, and injected faults."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

from tinygpt.runtime import Distributed


class StopOnSignal:
    """The first SIGINT or SIGTERM asks the loop to stop at the next step boundary; the
    handlers then go back to the defaults, so a second signal ends the process at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = signum
        for s in self.SIGNALS:
            signal.signal(s, signal.SIG_DFL)

    def __exit__(self, *exc: object) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def planned_fault(group: Distributed) -> int | None:
    """TINYGPT_FAULT_STEP=RANK:STEP makes that rank crash after that step, once (not after a
    torchrun restart): a switch for testing recovery, off unless the variable is set.
    Returns the step at which this process is to crash, or None; read once per run."""
    fault = os.environ.get("TINYGPT_FAULT_STEP")
    if not fault or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return None
    rank, step = (int(part) for part in fault.split(":"))
    return step if rank == group.rank else None


def crash(group: Distributed, step: int) -> None:
    print(f"tinygpt: injected fault on rank {group.rank} at step {step}", file=sys.stderr)
    os._exit(17)
