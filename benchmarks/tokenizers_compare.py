"""Which tokenizer gives the best model per CPU minute: the same recipe, a budget of training
time, bits per byte on the same text.

    python benchmarks/tokenizers_compare.py [--budgets 60 240]
        [--specs cpu-fast cpu-fast+data.tokenizer=byte cpu-fast+data.tokenizer=bpe ...]

A spec is a preset with overrides, as in time_to_loss.py. For each budget and spec, a short
calibration measures the time of a training step; the run then gets as many steps as fit in
the budget (its schedule spans them: a run made for the budget, not a longer run cut
short). The training clock counts training steps only. Every model is then scored on the
same text, the last 100,000 characters of tiny shakespeare (inside every tokenizer's val
split), each token predicted once: bits per byte of that text, so tokenizers that pack more
text into a token are compared fairly. A sample of each model is printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time

import torch

from tinygpt.config import RunConfig, SampleConfig, parse_overrides, resolve
from tinygpt.data.corpora import resolve_corpus
from tinygpt.evaluate import bits_per_byte, split_loss
from tinygpt.generate import stream_text
from tinygpt.runtime import cpu_description
from tinygpt.training.loop import setup, train_step

COMMON_CHARACTERS = 100_000
CALIBRATION_STEPS = 60


def run_config(spec: str, steps: int | None = None) -> RunConfig:
    preset, *settings = spec.split("+")
    config = resolve(preset, overrides=parse_overrides(settings))
    if steps is not None:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, steps=steps))
    return config


def seconds_per_step(spec: str) -> float:
    session = setup(run_config(spec))
    for _ in range(10):  # warm-up: first steps allocate
        train_step(session)
    start = time.perf_counter()
    for _ in range(CALIBRATION_STEPS):
        train_step(session)
    return (time.perf_counter() - start) / CALIBRATION_STEPS


def one_run(spec: str, budget: float, text: str) -> dict:
    steps = max(10, int(budget / seconds_per_step(spec)))
    config = run_config(spec, steps)
    session = setup(config)
    clock = 0.0
    while session.step < steps:
        start = time.perf_counter()
        train_step(session)
        clock += time.perf_counter() - start
    tokenizer = session.data.tokenizer
    ids = tokenizer.encode_array(text)
    loss = split_loss(session.saved_model, ids, config.model.block_size, 64, session.device)
    bpb = bits_per_byte(loss, len(ids) / len(text.encode("utf-8")))
    sampling = SampleConfig(max_new_tokens=400, seed=7)
    sample = "".join(
        stream_text(session.saved_model, tokenizer, "", config.model.block_size, sampling)
    )
    return {
        "steps": steps,
        "seconds": clock,
        "loss": loss,
        "bpb": bpb,
        "tokens_per_byte": len(ids) / len(text.encode("utf-8")),
        "vocab": tokenizer.vocab_size,
        "sample": sample[:300],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[60, 240])
    parser.add_argument(
        "--specs",
        nargs="+",
        default=[
            "cpu-fast",
            "cpu-fast+data.tokenizer=byte",
            "cpu-fast+data.tokenizer=bpe+data.vocab_size=512",
            "cpu-fast+data.tokenizer=bpe+data.vocab_size=1024",
        ],
    )
    args = parser.parse_args()
    print(f"cpu: {cpu_description()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    text = resolve_corpus("tinyshakespeare").read_text(encoding="utf-8")[-COMMON_CHARACTERS:]
    results = {}
    for budget in args.budgets:
        for spec in args.specs:
            result = one_run(spec, budget, text)
            results[budget, spec] = result
            print(
                f"budget {budget:.0f} s | {spec}: vocab {result['vocab']}, {result['steps']} steps "
                f"in {result['seconds']:.1f} s, {result['tokens_per_byte']:.3f} tokens/byte, "
                f"loss {result['loss']:.4f}/token, {result['bpb']:.4f} bits/byte",
                flush=True,
            )
    print("\nbits per byte of the last 100,000 characters (lower is better):")
    print("spec".ljust(52) + "".join(f"{b:>8.0f} s" for b in args.budgets))
    for spec in args.specs:
        row = "".join(f"{results[b, spec]['bpb']:>10.4f}" for b in args.budgets)
        print(spec.ljust(52) + row)
    budget = max(args.budgets)
    for spec in args.specs:
        print(f"\n--- {spec}, {budget:.0f} s: sample ---\n{results[budget, spec]['sample']}")
    assert all(math.isfinite(r["bpb"]) for r in results.values())


if __name__ == "__main__":
    main()
