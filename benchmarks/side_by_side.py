"""Two trainings side by side against one after the other, with the thread policy of before
(every CPU for each run, OpenMP's idle threads spinning as long as GNU OpenMP's default) and
the one of now (the CPUs free at start; idle threads sleep soon), in one invocation.

    python benchmarks/side_by_side.py [--preset cpu-fast] [--delay 4] [--repeats 3]

For each policy and repeat: run A alone, run B alone (one after the other: the sum of the
two), then A and B together, B started `--delay` seconds after A (as a second terminal
would), timed from A's start to the end of the later one. Whole `tinygpt train` commands,
start-up included; each run writes its own directory. Prints each figure, the medians, and
the ratio together / one after the other (goal: at most 1.3) and now / before alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tinygpt.config import preset_names
from tinygpt.cpus import WAIT_VARIABLES, usable_cpus
from tinygpt.runtime import cpu_description

GNU_OPENMP_DEFAULT_SPINS = "300000"  # what an unset GOMP_SPINCOUNT means to GNU OpenMP


def policy_env(policy: str) -> tuple[dict[str, str], list[str]]:
    """The environment and extra options of a run under a thread policy."""
    env = {k: v for k, v in os.environ.items() if k not in (*WAIT_VARIABLES, "OMP_NUM_THREADS")}
    if policy == "before":
        env["GOMP_SPINCOUNT"] = GNU_OPENMP_DEFAULT_SPINS
        return env, ["--train.threads", str(usable_cpus())]
    return env, []


def start(preset: str, policy: str, out: Path, extra: list[str]) -> subprocess.Popen[bytes]:
    env, options = policy_env(policy)
    command = [
        sys.executable, "-m", "tinygpt", "train", "--preset", preset, "--out", str(out),
        "--train.sample_tokens", "0", *options, *extra,
    ]  # fmt: skip
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait(process: subprocess.Popen[bytes]) -> None:
    _, err = process.communicate()
    if process.returncode != 0:
        sys.exit(f"a run failed ({process.returncode}): {err.decode()[-2000:]}")


def alone(preset: str, policy: str, out: Path, extra: list[str]) -> float:
    began = time.perf_counter()
    wait(start(preset, policy, out, extra))
    return time.perf_counter() - began


def together(preset: str, policy: str, outs: tuple[Path, Path], delay: float, extra: list[str]):
    """Seconds from A's start to the end of both runs."""
    began = time.perf_counter()
    first = start(preset, policy, outs[0], extra)
    time.sleep(delay)
    second = start(preset, policy, outs[1], extra)
    wait(first)
    wait(second)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu-fast", choices=preset_names())
    parser.add_argument("--delay", type=float, default=4.0, help="seconds between A and B")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--policies", nargs="+", default=["before", "now"])
    parser.add_argument("--alone-only", action="store_true", help="skip the runs together")
    args, extra = parser.parse_known_args()  # the rest goes to `tinygpt train`
    print(f"cpu: {cpu_description()}; {usable_cpus()} usable")
    print(f"{args.preset}, B starts {args.delay:g} s after A, {args.repeats} repeats {extra}")
    figures: dict[str, dict[str, list[float]]] = {p: {} for p in args.policies}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for policy in args.policies:  # interleaved: a slow stretch hits both
                runs = [Path(tmp) / f"{policy}-{repeat}-{name}" for name in "abcd"]
                a = alone(args.preset, policy, runs[0], extra)
                b = alone(args.preset, policy, runs[1], extra)
                got = {"alone": a, "one after the other": a + b}
                if not args.alone_only:
                    pair = (runs[2], runs[3])
                    got["together"] = together(args.preset, policy, pair, args.delay, extra)
                for name, seconds in got.items():
                    figures[policy].setdefault(name, []).append(seconds)
                figures[policy]["alone"].append(b)
                line = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in got.items())
                print(f"{policy} #{repeat + 1}: A {a:.1f} s, B {b:.1f} s; {line}", flush=True)
    print("medians:")
    for policy, named in figures.items():
        medians = {name: statistics.median(values) for name, values in named.items()}
        line = f"  {policy}: " + ", ".join(f"{k} {v:.1f} s" for k, v in medians.items())
        if "together" in medians:
            ratio = medians["together"] / medians["one after the other"]
            line += f": together / one after the other {ratio:.2f}"
        print(line)
    if {"before", "now"} <= figures.keys():
        ratio = statistics.median(figures["now"]["alone"]) / statistics.median(
            figures["before"]["alone"]
        )
        print(f"alone, now / before: {ratio:.2f}")


if __name__ == "__main__":
    main()
