"""Where and how computation runs: device, dtype, seeds, RNG states, and the torchrun group."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import random
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from tinygpt.errors import UserError


def resolve_device(name: str) -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an explicit device must exist here."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but this machine has no usable CUDA GPU")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("device 'mps' asked for, but this machine has no usable Apple GPU")
    return torch.device(name)


def require_compiler(device: torch.device) -> None:
    """torch.compile on a CPU writes C++ kernels and builds them with the system's compiler
    (CXX, else g++): without one it would fail at the first step, deep inside torch."""
    if device.type != "cpu":
        return
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "clang++", "c++"]
    if not any(shutil.which(name) for name in names):
        raise UserError(
            f"--train.compile true needs a C++ compiler on a CPU ({' or '.join(names)}: none "
            "found); install one or pass --train.compile false"
        )


@dataclass(frozen=True)
class ProcessSettings:
    """What a run may switch on for the whole process, noted to be given back at its end."""

    threads: int
    deterministic: bool
    deterministic_warn_only: bool

    @classmethod
    def current(cls) -> ProcessSettings:
        return cls(
            threads=torch.get_num_threads(),
            deterministic=torch.are_deterministic_algorithms_enabled(),
            deterministic_warn_only=torch.is_deterministic_algorithms_warn_only_enabled(),
        )

    def restore(self) -> None:
        """Give back what changed (torch.use_deterministic_algorithms imports the compiler,
        1.4 s on a 2-core CPU: called only where a run switched the mode)."""
        torch.set_num_threads(self.threads)
        if ProcessSettings.current() != self:
            torch.use_deterministic_algorithms(
                self.deterministic, warn_only=self.deterministic_warn_only
            )


def seed_everything(seed: int) -> None:
    """Seed every generator a run may touch; tinygpt's own streams use explicit generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices at least about as fast as float32 ones.

    Measured once per process rather than read from CPU flags: what matters is the path
    torch's kernels take, and flags do not tell it. torch reports "AVX512" for CPUs with and
    without bfloat16 instructions, oneDNN may be held to a lower ISA (ONEDNN_MAX_CPU_ISA),
    and ARM CPUs differ by vendor. Without native support the product takes a scalar path
    10-100x slower than float32 (benchmarks/RESULTS.md), so the verdict is not close; the
    measurement costs a few milliseconds where bfloat16 is native and about 0.1 s where not.
    """
    times = {dtype: _matmul_seconds(dtype) for dtype in (torch.float32, torch.bfloat16)}
    return times[torch.bfloat16] <= 3 * times[torch.float32]


def _matmul_seconds(dtype: torch.dtype, size: int = 256, repeats: int = 3) -> float:
    """The fastest of a few (size x size) products, after one untimed warm-up.

    On one thread and in CPU time, not wall time: on a busy machine, waiting for a core
    would otherwise count, and a 0.2 ms float32 product could look as slow as a bfloat16 one.
    """
    a = torch.ones(size, size, dtype=dtype)
    with cpu_threads(1):
        torch.mm(a, a)  # untimed: oneDNN compiles its kernel on the first call
        best = float("inf")
        for _ in range(repeats):
            start = time.process_time()
            torch.mm(a, a)
            best = min(best, time.process_time() - start)
    return best


@contextlib.contextmanager
def cpu_threads(count: int) -> Iterator[None]:
    """torch's CPU threads set to `count` (at least 1) for the body, given back after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, count))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bfloat16 arithmetic pays on this device (GPUs: if supported at all)."""
    if device.type == "cpu":
        return cpu_has_native_bf16()
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return True


def reduced_precision(device: torch.device) -> torch.dtype:
    """The dtype for work that tolerates bfloat16 (Muon's orthogonalisation): bfloat16 where
    it is fast, float32 on CPUs without native bfloat16."""
    return torch.bfloat16 if bf16_is_fast(device) else torch.float32


def newton_schulz_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype of Muon's orthogonalisation (optim.muon_ns_dtype): `auto` is
    `reduced_precision`'s choice."""
    if name == "bfloat16":
        warn_if_bf16_is_slow(device, "Muon's orthogonalisation")
        return torch.bfloat16
    return torch.float32 if name == "float32" else reduced_precision(device)


def warn_if_bf16_is_slow(device: torch.device, what: str) -> None:
    """One line on stderr when bfloat16 is asked for explicitly on a CPU without it."""
    if device.type == "cpu" and not cpu_has_native_bf16():
        print(
            f"tinygpt: warning: {what} in bfloat16 will be slow here: this CPU has no native "
            "bfloat16 matrix products (torch falls back to a path 10-100x slower than "
            "float32); float32 is faster",
            file=sys.stderr,
        )


def cpu_description() -> str:
    """The CPU a figure was measured on: model name, torch's capability level and cores."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            name = next(
                line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    bf16 = "native bfloat16" if cpu_has_native_bf16() else "no native bfloat16"
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{name}; torch CPU capability {capability}; {bf16}; {os.cpu_count()} cores"


def autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The dtype to autocast the forward pass to, or None for plain float32.

    `auto` is bfloat16 on CUDA GPUs that support it and float32 elsewhere: on a CPU, even
    one with native bfloat16, autocast did not pay at the shapes of the CPU presets (the
    casts cost what the products save; benchmarks/RESULTS.md).
    """
    if name == "bfloat16":
        warn_if_bf16_is_slow(device, "training")
        return torch.bfloat16
    if name == "auto" and device.type == "cuda" and bf16_is_fast(device):
        return torch.bfloat16
    return None


def rng_states(device: torch.device) -> dict[str, torch.Tensor | list[torch.Tensor]]:
    """The global generators a training step draws from (dropout)."""
    states: dict[str, torch.Tensor | list[torch.Tensor]] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, torch.Tensor | list[torch.Tensor]]) -> None:
    torch.set_rng_state(states["torch"])  # type: ignore[arg-type]  # a tensor, by its key
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun group (rank 0 of 1 without torchrun)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE_PROCESS = Distributed()


# torchrun's environment is read here and nowhere else.


def under_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ


def restart_count() -> int:
    """How many times torchrun has restarted the group after a failure (0: never)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def distributed_from_env() -> Distributed:
    """Read the rank and group size that torchrun sets; plain runs are a group of one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed()
    return Distributed(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), world_size)


def init_distributed(dist_info: Distributed, device: torch.device) -> torch.device:
    """Join the process group (nccl on CUDA, gloo on CPU); a CUDA rank gets its own GPU."""
    if not dist_info.enabled or dist.is_initialized():
        return device if device.type != "cuda" else torch.device("cuda", dist_info.local_rank)
    if device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    store = _store_for_this_attempt(dist_info)
    dist.init_process_group(
        backend, store=store, rank=dist_info.rank, world_size=dist_info.world_size
    )
    return device


def _store_for_this_attempt(dist_info: Distributed) -> dist.Store:
    """torchrun's key-value store, under a prefix of its own for each restart.

    After torchrun restarts a group, the new processes would otherwise find the addresses
    that the old ones published under the same keys, and a rank may try to connect to a
    process that no longer exists ("connectFullMesh ... Connection refused").
    """
    agent_hosts_it = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        dist_info.world_size,
        is_master=dist_info.is_main and not agent_hosts_it,
    )
    return dist.PrefixStore(f"tinygpt/attempt-{restart_count()}", store)


def all_mean(value: float, dist_info: Distributed, device: torch.device) -> float:
    """The mean of a number over the group (the number itself in a group of one)."""
    if not dist_info.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.item() / dist_info.world_size


def any_rank(flag: bool, dist_info: Distributed, device: torch.device) -> bool:
    """True on every rank if it is true on one (so that all ranks stop at the same step)."""
    if not dist_info.enabled:
        return flag
    tensor = torch.tensor([int(flag)], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def barrier(dist_info: Distributed) -> None:
    if dist_info.enabled:
        dist.barrier()
