"""The CPUs a run computes on: how many this process may use, how busy other work keeps
them, and how OpenMP's idle threads wait. No torch here: the waiting is set before torch
loads its OpenMP runtime, which reads it once.

Two trainings side by side on a small machine are common (a learner comparing presets in
two terminals). Each used to size its thread pool to the whole machine, and OpenMP's idle
threads spin for a while before they sleep: two processes then took turns spinning on the
cores the other needed, and ran several times slower than one after the other
(benchmarks/side_by_side.py, RESULTS.md). So a run takes the threads that are free when it
starts, and idle threads sleep soon.
"""

from __future__ import annotations

import os
import time

# OpenMP's waiting, in the variables of GNU OpenMP (torch's Linux builds) and Intel's; a
# user who sets any of them keeps their choice.
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
# Spins before an idle thread sleeps (GNU OpenMP's own default is 300,000): long enough to
# catch the next parallel region of a busy step, short enough to give the core away soon
# when another process wants it (measured: benchmarks/side_by_side.py).
SPIN_COUNT = "10000"
THREADS_VARIABLE = "OMP_NUM_THREADS"  # a launcher's choice (torchrun sets 1) is kept


def wait_briefly() -> None:
    """Let OpenMP's idle threads sleep soon, unless the user chose how they wait. Takes
    effect only before torch is imported: the command line calls it first thing."""
    if not any(name in os.environ for name in WAIT_VARIABLES):
        os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT


def usable_cpus() -> int:
    """How many CPUs this process may run on (its affinity; a container's cpuset shows)."""
    return len(_usable_cpu_ids()) or os.cpu_count() or 1


def _usable_cpu_ids() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return set()


def busy_cpus(window_s: float = 0.1) -> float:
    """How many of this process's usable CPUs other work kept busy over the next `window_s`
    seconds (0 where the system does not say). This process sleeps meanwhile."""
    cpus = _usable_cpu_ids()
    before = _cpu_times(cpus)
    if before is None:
        return 0.0
    time.sleep(window_s)
    after = _cpu_times(cpus)
    if after is None:
        return 0.0
    busy = 0.0
    for (total_0, idle_0), (total_1, idle_1) in zip(before, after, strict=True):
        if total_1 > total_0:
            busy += 1 - (idle_1 - idle_0) / (total_1 - total_0)
    return busy


def _cpu_times(cpus: set[int]) -> list[tuple[int, int]] | None:
    """(all, idle) jiffies of each of `cpus`, from /proc/stat (None: not on Linux)."""
    times = []
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            for line in stat:
                name, *values = line.split()
                if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                    fields = [int(value) for value in values]
                    idle = fields[3] + fields[4]  # idle, and waiting for I/O
                    times.append((sum(fields[:8]), idle))  # guests count in user time
    except (OSError, ValueError, IndexError):
        return None
    return times or None


def free_threads(usable: int, busy: float) -> int:
    """Threads for a run: the usable CPUs that other work leaves free, at least one.

    A CPU counts as taken when other work keeps it busy more than half the time."""
    return max(1, usable - int(busy + 0.5))


def choose_threads() -> tuple[int, str]:
    """Threads for a run that did not choose, and why (for a note; '' when there is nothing
    to say): a launcher's OMP_NUM_THREADS, else the usable CPUs that are free now."""
    if os.environ.get(THREADS_VARIABLE, "").isdigit():
        return max(1, int(os.environ[THREADS_VARIABLE])), ""
    usable = usable_cpus()
    busy = busy_cpus()
    threads = free_threads(usable, busy)
    if threads == usable:
        return threads, ""
    return threads, (
        f"other work keeps {busy:.1f} of this machine's CPUs busy; training with {threads} of "
        f"the {usable} this process may use (--train.threads sets it)"
    )
