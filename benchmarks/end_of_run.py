"""The end of a run on a large corpus: what scoring the val split after the last step costs.

    python benchmarks/end_of_run.py [--megabytes 300] [--preset cpu-baby] [--whole-sample 1000000]

Writes a generated corpus of `--megabytes` (prepare_speed's mixed text), prepares it, and
times a 1-step run's end-of-run score as `tinygpt train` does it now (at most
train.whole_val_tokens, on evenly spaced windows, with its standard error), and what reading
every val token would cost, from the time of the first `--whole-sample` tokens of it (the
whole of it takes minutes, which is the point). Prints the CPU, the sizes and the seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from prepare_speed import SHAKESPEARE, write_corpus
from tinygpt.config import resolve
from tinygpt.evaluate import split_loss
from tinygpt.runtime import cpu_description
from tinygpt.training.loop import score_whole_val, setup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=300)
    parser.add_argument("--preset", default="cpu-baby")
    parser.add_argument("--whole-sample", type=int, default=1_000_000, metavar="TOKENS")
    args = parser.parse_args()
    print(f"cpu: {cpu_description()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        write_corpus(corpus, SHAKESPEARE, args.megabytes)
        config = resolve(args.preset, overrides={"data": {"dataset": str(corpus)}})
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, steps=1))
        began = time.perf_counter()
        session = setup(config)
        threads = session.config.train.threads
        print(
            f"{args.megabytes} MB corpus prepared in {time.perf_counter() - began:.1f} s: "
            f"{len(session.data.val):,} val tokens; {args.preset}, {threads} threads"
        )
        session.step = 1  # the last step of a 1-step run
        began = time.perf_counter()
        scored = score_whole_val(session)
        seconds = time.perf_counter() - began
        tokens = int(scored.get("sampled_val_tokens", len(session.data.val) - 1))
        loss = scored.get("sampled_val_loss", scored.get("whole_val_loss"))
        stderr = scored.get("sampled_val_stderr", 0.0)
        print(f"end-of-run score now: {seconds:.1f} s for {tokens:,} tokens "
              f"(loss {loss:.4f} ± {stderr:.4f})")  # fmt: skip
        head = session.data.val[: args.whole_sample + 1]
        cfg = session.config
        began = time.perf_counter()
        split_loss(
            session.saved_model, head, cfg.model.block_size, cfg.train.batch_size, session.device
        )
        seconds = time.perf_counter() - began
        whole = seconds * (len(session.data.val) - 1) / (len(head) - 1)
        print(f"every val token (as before): {seconds:.1f} s for the first {len(head) - 1:,}, "
              f"so about {whole:.0f} s for all {len(session.data.val) - 1:,}")  # fmt: skip


if __name__ == "__main__":
    main()
