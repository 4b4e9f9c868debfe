"""Preparation speed and memory: each tokenizer on a generated corpus, and nanoGPT's way.

    python benchmarks/prepare_speed.py [--megabytes 1024] [--nanogpt-megabytes 256]
                                       [--gpt2-ranks PATH] [--kinds char byte bpe gpt2]

The corpus is tiny shakespeare's lines shuffled (seeded) with Chinese and emoji lines among
them, written until it has the size asked for (tiny shakespeare must be beside the
repository). Each tokenizer prepares it in a fresh process with an empty cache: the whole
`prepare` (tokenizer training for bpe, reading, encoding, writing, splitting), its MB/s of
input and tokens/s, and the process' peak memory (VmHWM). For bpe the tokenizer's training
alone is timed too.

nanoGPT's prepare scripts for tiny shakespeare read the whole text, encode it in one call
(a Python list of character ids; tiktoken's `encode_ordinary` for GPT-2) and write the
arrays. The same steps run here on the first `--nanogpt-megabytes` of the corpus (their
memory grows with the corpus: a list of ids costs 8 bytes and more a token).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from tinygpt.runtime import cpu_description

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
GPT2_RANKS = REPO.parent / "shared" / "data" / "gpt2" / "gpt2.tiktoken"

PEAK = "import re; print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]))"

TINYGPT = """
import json, time
from tinygpt.config import DataConfig
from tinygpt.data.corpora import prepare
start = time.perf_counter()
p = prepare(DataConfig(dataset={corpus!r}, tokenizer={kind!r}, tokenizer_file={ranks!r}))
print(json.dumps({{"seconds": time.perf_counter() - start, "tokens": len(p.train) + len(p.val),
                  "vocab": p.tokenizer.vocab_size}}))
"""

BPE_TRAINING = """
import json, time
from tinygpt.config import DataConfig
from tinygpt.data.corpora import _train_tokenizer, resolve_source
start = time.perf_counter()
tokenizer = _train_tokenizer(resolve_source({corpus!r}), DataConfig(tokenizer="bpe"))
print(json.dumps({{"seconds": time.perf_counter() - start}}))
"""

# nanoGPT's data/shakespeare_char/prepare.py steps: whole text, sorted set, a list of ids
NANOGPT_CHAR = """
import json, time, numpy as np
start = time.perf_counter()
text = open({corpus!r}, encoding="utf-8").read()
vocabulary = sorted(set(text))
index = {{ch: i for i, ch in enumerate(vocabulary)}}
n = len(text)
train, val = text[: int(n * 0.9)], text[int(n * 0.9):]
train_ids = np.array([index[c] for c in train], dtype=np.uint16)
val_ids = np.array([index[c] for c in val], dtype=np.uint16)
train_ids.tofile({out!r} + "/train.bin"); val_ids.tofile({out!r} + "/val.bin")
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "tokens": len(train_ids) + len(val_ids)}}))
"""

# nanoGPT's data/shakespeare/prepare.py steps: whole text, tiktoken's gpt2 encode_ordinary
NANOGPT_GPT2 = """
import json, time, numpy as np
from tinygpt.tokenizers.gpt2 import Gpt2Tokenizer
from pathlib import Path
encoding = Gpt2Tokenizer(Path({ranks!r})).encoding
start = time.perf_counter()
text = open({corpus!r}, encoding="utf-8").read()
n = len(text)
train_ids = np.array(encoding.encode_ordinary(text[: int(n * 0.9)]), dtype=np.uint16)
val_ids = np.array(encoding.encode_ordinary(text[int(n * 0.9):]), dtype=np.uint16)
train_ids.tofile({out!r} + "/train.bin"); val_ids.tofile({out!r} + "/val.bin")
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "tokens": len(train_ids) + len(val_ids)}}))
"""


def write_corpus(path: Path, source: Path, megabytes: int) -> None:
    """Shuffled lines of `source` with Chinese and emoji among them, seeded (tests use it too)."""
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    lines += ["床前明月光，疑是地上霜。\n", "wave 👋🏽 and flag 🇫🇷\n", "naïve café\n"] * 50
    rng = np.random.default_rng(0)
    with path.open("w", encoding="utf-8") as out:
        while out.tell() < megabytes << 20:
            out.write("".join(lines[i] for i in rng.permutation(len(lines))))


def run(script: str, home: Path) -> dict:
    """Run a script in a fresh process; its JSON line and its peak memory in MB."""
    code = script + f"\n{PEAK}\n"
    env = {**os.environ, "TINYGPT_HOME": str(home), "TQDM_DISABLE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1]}
    *lines, peak_kb = result.stdout.strip().splitlines()
    return {**json.loads(lines[-1]), "peak_mb": int(peak_kb) // 1024}


def report(label: str, corpus_bytes: int, result: dict) -> None:
    if "error" in result:
        print(f"{label:<28} failed: {result['error']}")
        return
    seconds = result["seconds"]
    rate = f"{corpus_bytes / seconds / 1e6:7.1f} MB/s"
    tokens = f"{result['tokens'] / seconds / 1e6:6.2f} M tokens/s" if "tokens" in result else ""
    print(
        f"{label:<28} {seconds:7.1f} s {rate} {tokens:>17}  peak {result['peak_mb']:,} MB",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=1024)
    parser.add_argument("--nanogpt-megabytes", type=int, default=256)
    parser.add_argument("--gpt2-ranks", type=Path, default=GPT2_RANKS)
    parser.add_argument("--kinds", nargs="+", default=["char", "byte", "bpe", "gpt2"])
    args = parser.parse_args()
    print(cpu_description())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus, small = work / "corpus.txt", work / "small.txt"
        write_corpus(corpus, SHAKESPEARE, args.megabytes)
        write_corpus(small, SHAKESPEARE, args.nanogpt_megabytes)
        size, small_size = corpus.stat().st_size, small.stat().st_size
        print(f"corpus: {size / 1e6:,.0f} MB; nanoGPT's steps on {small_size / 1e6:,.0f} MB")
        ranks = str(args.gpt2_ranks)
        for kind in args.kinds:
            values = {"corpus": str(corpus), "kind": kind, "ranks": ranks * (kind == "gpt2")}
            report(f"tinygpt {kind}", size, run(TINYGPT.format(**values), work / f"h-{kind}"))
            if kind == "bpe":
                result = run(BPE_TRAINING.format(corpus=str(corpus)), work / "h-bpe-training")
                report("  of which bpe training", size, result)
        for label, script in (("char", NANOGPT_CHAR), ("gpt2", NANOGPT_GPT2)):
            if label not in args.kinds:
                continue
            out = work / f"nanogpt-{label}"
            out.mkdir()
            code = script.format(corpus=str(small), out=str(out), ranks=ranks)
            report(f"nanoGPT's steps, {label}", small_size, run(code, work / "h-nanogpt"))
            values = {"corpus": str(small), "kind": label, "ranks": ranks * (label == "gpt2")}
            report(
                f"tinygpt {label}, same input",
                small_size,
                run(TINYGPT.format(**values), work / f"h-small-{label}"),
            )


if __name__ == "__main__":
    if not re.match("linux", sys.platform):
        sys.exit("reads peak memory from /proc (Linux)")
    main()
