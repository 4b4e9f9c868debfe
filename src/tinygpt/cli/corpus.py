"""`tinygpt data`, `inspect` and `trick`: corpora and the notebook's steps, before any
training."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tinygpt.cli.parsing import fail
from tinygpt.config import preset_names, resolve
from tinygpt.errors import unknown_name
from tinygpt.tokenizers import KINDS


def add_data_command(commands: Any) -> None:
    data = commands.add_parser(
        "data", help="download a corpus, or list the registry", allow_abbrev=False
    )
    data.add_argument("name", nargs="?", help="registered corpus name (none: list them)")
    data.add_argument(
        "--from",
        dest="source",
        type=Path,
        metavar="FILE",
        help="take a local copy instead of downloading (the checksum is verified)",
    )


def add_inspect_command(commands: Any) -> None:
    inspect = commands.add_parser(
        "inspect", help="walk through the notebook's data steps", allow_abbrev=False
    )
    inspect.add_argument(
        "--data", default="tinyshakespeare", metavar="NAME|FILE|FOLDER", help="corpus"
    )
    inspect.add_argument(
        "--tokenizer", default="char", choices=list(KINDS), help="tokenizer kind (default: char)"
    )
    inspect.add_argument(
        "--vocab-size", type=int, default=0, metavar="N", help="bpe: vocabulary size"
    )
    inspect.add_argument(
        "--tokenizer-file", default="", metavar="FILE", help="gpt2: GPT-2's ranks file"
    )
    inspect.add_argument("--block-size", type=int, default=8, help="context length (default: 8)")
    inspect.add_argument("--batch-size", type=int, default=4, help="batch size (default: 4)")
    inspect.add_argument("--seed", type=int, default=1337, help="batch seed (default: 1337)")
    inspect.add_argument(
        "--example", metavar="TEXT", help="text to encode and decode (default: 'hii there')"
    )
    inspect.add_argument(
        "--preset", choices=preset_names(), help="also show this preset's model, part by part"
    )


def add_trick_command(commands: Any) -> None:
    trick = commands.add_parser(
        "trick",
        help="the mathematical trick in self-attention, as the notebook prints it",
        allow_abbrev=False,
    )
    trick.add_argument(
        "--png", type=Path, metavar="DIR", help="also draw the weight matrices as PNGs in DIR"
    )


def run_data(args: argparse.Namespace) -> None:
    from tinygpt.data import corpora as data

    if args.name is None and args.source is not None:
        fail(f"--from needs a corpus name: tinygpt data NAME --from {args.source}")
    if args.name is None:
        print(f"cache: {data.cache_home()}")
        for corpus in data.CORPORA.values():
            state = "cached" if data.corpus_cache_path(corpus).exists() else "not downloaded"
            print(f"{corpus.name:<16} {state:<15} {corpus.description}\n{'':<16} {corpus.url}")
        return
    if args.name not in data.CORPORA:
        fail(unknown_name("corpus", args.name, data.CORPORA))
    corpus = data.CORPORA[args.name]
    if args.source is not None:
        path = data.import_local_copy(corpus, args.source)
        print(f"sha256 matched ({corpus.sha256[:12]}...): {args.source} is {corpus.name}")
    else:
        path = data.resolve_corpus(args.name)
    print(path)


def run_inspect(args: argparse.Namespace) -> None:
    from tinygpt.config import DataConfig
    from tinygpt.viz.notebook import inspect_corpus

    if args.block_size < 1 or args.batch_size < 1 or args.seed < 0:
        fail("--block-size and --batch-size must be at least 1, --seed not negative")
    model = resolve(args.preset).model if args.preset else None
    inspect_corpus(
        DataConfig(
            dataset=args.data,
            tokenizer=args.tokenizer,
            vocab_size=args.vocab_size,
            tokenizer_file=args.tokenizer_file,
        ),
        sys.stdout,
        block_size=args.block_size,
        batch_size=args.batch_size,
        seed=args.seed,
        example=args.example,
        model=model,
    )


def run_trick(args: argparse.Namespace) -> None:
    from tinygpt.viz.notebook import print_trick

    print_trick(sys.stdout, png_dir=args.png)
