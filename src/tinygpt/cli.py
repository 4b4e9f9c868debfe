"""The `tinygpt` command line: data, inspect, train, sample.

Every config field is an option (`--section.field VALUE`) generated from the dataclasses, so
`--help` is always complete. A user's mistake ends in one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from tinygpt.config import (
    SampleConfig,
    field_types,
    parse_value,
    preset_names,
    resolve,
    section_types,
)
from tinygpt.errors import TrainingInterrupted, UserError

SHORTCUTS = {  # short flag -> (config key, metavar, help)
    "--data": ("data.dataset", "NAME|FILE", "registered corpus or UTF-8 text file"),
    "--steps": ("train.steps", "N", "optimizer steps"),
    "--seed": ("train.seed", "N", "seed for weights, batches and sampling"),
}


class Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (no usage block) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see `{self.prog} --help`)")


def fail(message: str) -> NoReturn:
    print(f"tinygpt: error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(2)


def converter(kind: type) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        return parse_value(kind, text)

    convert.__name__ = kind.__name__  # argparse names the type in its error message
    return convert


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One `--section.field` option per config field, and the short aliases."""
    for flag, (key, metavar, help_text) in SHORTCUTS.items():
        section, name = key.split(".")
        kind = field_types(section_types()[section])[name]
        parser.add_argument(
            flag,
            dest=key,
            type=converter(kind),
            metavar=metavar,
            default=argparse.SUPPRESS,
            help=f"{help_text} (same as --{key})",
        )
    for section, section_cls in section_types().items():
        group = parser.add_argument_group(f"{section} options")
        kinds = field_types(section_cls)
        for f in dataclasses.fields(section_cls):
            group.add_argument(
                f"--{section}.{f.name}",
                dest=f"{section}.{f.name}",
                type=converter(kinds[f.name]),
                metavar=kinds[f.name].__name__.upper(),
                default=argparse.SUPPRESS,
                help=f"{f.metadata.get('help', '')} (default: {f.default!r})",
            )


def config_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The dotted options given on the command line, as a nested dict."""
    overrides: dict[str, dict[str, Any]] = {}
    for key, value in vars(args).items():
        if "." in key:
            section, name = key.split(".", 1)
            overrides.setdefault(section, {})[name] = value
    return overrides


def build_parser() -> Parser:
    parser = Parser(prog="tinygpt", description=__doc__.splitlines()[0], allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

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

    inspect = commands.add_parser(
        "inspect", help="walk through the notebook's data steps", allow_abbrev=False
    )
    inspect.add_argument("--data", default="tinyshakespeare", metavar="NAME|FILE", help="corpus")
    inspect.add_argument("--block-size", type=int, default=8, help="context length (default: 8)")
    inspect.add_argument("--batch-size", type=int, default=4, help="batch size (default: 4)")
    inspect.add_argument("--seed", type=int, default=1337, help="batch seed (default: 1337)")

    train = commands.add_parser(
        "train", help="train a model into a run directory", allow_abbrev=False
    )
    train.add_argument("--preset", choices=preset_names(), help="a shipped preset (configs/)")
    train.add_argument("--config", type=Path, metavar="FILE", help="a TOML config file")
    train.add_argument(
        "--out", type=Path, metavar="DIR", help="run directory (default: runs/NAME-TIME)"
    )
    train.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    train.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue a run from its newest checkpoint (--steps may raise its total)",
    )
    train.add_argument(
        "--nproc", type=int, default=1, metavar="N",
        help="train with N processes on this machine (launches torchrun; default: 1)",
    )  # fmt: skip
    add_config_options(train)

    sample = commands.add_parser(
        "sample", help="generate text from a trained run", allow_abbrev=False
    )
    sample.add_argument(
        "run_dir", type=Path, metavar="RUN_DIR", help="a run directory or checkpoint"
    )
    prompt = sample.add_mutually_exclusive_group()
    prompt.add_argument(
        "--prompt", default="", help="text to continue (default: token 0, a newline)"
    )
    prompt.add_argument(
        "--prompt-file", type=Path, metavar="FILE", help="read the prompt from FILE"
    )
    for f in dataclasses.fields(SampleConfig):
        kind = field_types(SampleConfig)[f.name]
        sample.add_argument(
            f"--{f.name.replace('_', '-')}",
            dest=f.name,
            type=converter(kind),
            default=f.default,
            metavar=kind.__name__.upper(),
            help=f"{f.metadata['help']} (default: {f.default!r})",
        )
    sample.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TEXT",
        help="end a sample where TEXT appears (repeatable; TEXT is not shown)",
    )
    sample.add_argument("--output", type=Path, metavar="FILE", help="also write the text to FILE")
    return parser


def run_data(args: argparse.Namespace) -> None:
    from tinygpt import data

    if args.name is None:
        print(f"cache: {data.cache_home()}")
        for corpus in data.CORPORA.values():
            state = "cached" if data.corpus_cache_path(corpus).exists() else "not downloaded"
            print(f"{corpus.name:<16} {state:<15} {corpus.description}\n{'':<16} {corpus.url}")
        return
    if args.name not in data.CORPORA:
        fail(f"unknown corpus {args.name!r} (known: {', '.join(data.CORPORA)})")
    corpus = data.CORPORA[args.name]
    if args.source is not None:
        path = data.import_local_copy(corpus, args.source)
    else:
        path = data.resolve_corpus(args.name)
    print(path)


def run_inspect(args: argparse.Namespace) -> None:
    from tinygpt.config import DataConfig
    from tinygpt.walkthrough import inspect_corpus

    if args.block_size < 1 or args.batch_size < 1 or args.seed < 0:
        fail("--block-size and --batch-size must be at least 1, --seed not negative")
    inspect_corpus(
        DataConfig(dataset=args.data), args.block_size, args.batch_size, args.seed, sys.stdout
    )


def default_preset() -> str:
    """The fast CPU recipe on a CPU; nanoGPT's GPU recipe where there is a GPU."""
    import torch

    return "shakespeare-char" if torch.cuda.is_available() else "cpu-fast"


def run_train(args: argparse.Namespace) -> None:
    if args.nproc != 1:
        launch_torchrun(args)
    import torch.distributed as dist

    train_here(args)
    if dist.is_initialized():
        dist.barrier()  # rank 0 may still be plotting: leave together, or gloo aborts
        dist.destroy_process_group()


def launch_torchrun(args: argparse.Namespace) -> NoReturn:
    """`--nproc N`: the same command again, under torchrun with N processes here."""
    if args.nproc < 1:
        fail("--nproc must be at least 1")
    if "WORLD_SIZE" in os.environ:
        fail("--nproc starts torchrun itself; under torchrun, leave it out")
    if args.resume is None:  # a bad option fails here, once, rather than in every process
        resolve(args.preset or (None if args.config else default_preset()), args.config,
                config_overrides(args))  # fmt: skip
    argv = without_option(args.argv, "--nproc")
    if args.out is None and args.resume is None:  # every process must agree on the name
        argv += ["--out", str(default_run_dir(args.preset or default_preset()))]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={args.nproc}", "-m", "tinygpt", *argv]  # fmt: skip
    sys.exit(subprocess.run(command, check=False).returncode)


def without_option(argv: list[str], flag: str) -> list[str]:
    """argv less `flag VALUE` and `flag=VALUE`."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(f"{flag}="):
            kept.append(arg)
    return kept


def default_run_dir(name: str) -> Path:
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def train_here(args: argparse.Namespace) -> None:
    from tinygpt.checkpoint import is_run_dir
    from tinygpt.runs import is_finished, resume, train

    overrides = config_overrides(args)
    if "WORLD_SIZE" in os.environ and args.out is None and args.resume is None:
        fail("under torchrun, name the run directory with --out (restarts resume from it)")
    restarted = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0"
    resumed_by_torchrun = (
        restarted and args.resume is None and args.out is not None and is_run_dir(args.out)
    )
    if resumed_by_torchrun and is_finished(args.out):
        # the group failed after the last save (a process crashing on its way out): done
        if os.environ.get("RANK", "0") == "0":
            print(f"{args.out} already finished; nothing left to do after the restart")
        return
    if resumed_by_torchrun:
        final, run_dir = resume(args.out), args.out
    elif args.resume is not None:
        steps = overrides.get("train", {}).pop("steps", None)
        if any(overrides.values()) or args.preset or args.config or args.out or args.overwrite:
            fail("--resume continues a run with its own config; only --steps may be given")
        final, run_dir = resume(args.resume, steps=steps), args.resume
    else:
        preset = args.preset or (None if args.config else default_preset())
        config = resolve(preset, args.config, overrides)
        run_dir = args.out or default_run_dir(preset or args.config.stem)
        final = train(config, run_dir, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") == "0":
        print(f"final: train loss {final['train_loss']:.4f}, val loss {final['val_loss']:.4f}")
        print(f"saved in {run_dir}; sample with: tinygpt sample {run_dir}")
        print_best_if_earlier(run_dir, final["val_loss"])


def print_best_if_earlier(run_dir: Path, final_val_loss: float) -> None:
    """Point to the best checkpoint when the run over-fitted after it."""
    from tinygpt.checkpoint import checkpoints_dir, is_complete, read_meta

    best = checkpoints_dir(run_dir) / "best"
    if not is_complete(best):
        return
    meta = read_meta(best)
    if meta["metrics"]["val_loss"] < final_val_loss:
        print(
            f"lowest val loss {meta['metrics']['val_loss']:.4f} at step {meta['step']}: "
            f"tinygpt sample {best}"
        )


def run_sample(args: argparse.Namespace) -> None:
    import torch

    from tinygpt.checkpoint import load_checkpoint
    from tinygpt.generate import encode_prompt, stream_texts
    from tinygpt.runtime import warn_if_bf16_is_slow

    sampling = SampleConfig(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(SampleConfig)}
    )
    prompt = args.prompt if args.prompt_file is None else read_prompt(args.prompt_file)
    if args.output is not None and not args.output.parent.is_dir():
        fail(f"cannot write {args.output}: no such directory {args.output.parent}")
    checkpoint = load_checkpoint(args.run_dir)
    model = checkpoint.model.to(getattr(torch, sampling.dtype))
    if sampling.dtype == "bfloat16":
        warn_if_bf16_is_slow(next(model.parameters()).device, "sampling")
    block_size = checkpoint.config.model.block_size
    ids, was_cut = encode_prompt(checkpoint.tokenizer, prompt, block_size)
    if was_cut:
        print(
            f"tinygpt: note: the prompt is longer than the context; the model sees its last "
            f"{block_size} tokens",
            file=sys.stderr,
        )
    pieces = stream_texts(model, checkpoint.tokenizer, ids, block_size, sampling, args.stop)
    texts = [prompt] * sampling.num_samples
    if sampling.num_samples == 1:
        sys.stdout.write(prompt)
    for i, piece in pieces:
        texts[i] += piece
        if sampling.num_samples == 1:
            sys.stdout.write(piece)
            sys.stdout.flush()
    if sampling.num_samples == 1:
        sys.stdout.write("\n")
    else:
        sys.stdout.write(SAMPLE_SEPARATOR.join(texts) + "\n")
    if args.output is not None:
        write_text(args.output, SAMPLE_SEPARATOR.join(texts) + "\n")


SAMPLE_SEPARATOR = "\n---------------\n"


def read_prompt(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"prompt file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read prompt file {path}: {exc}") from None


def write_text(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from None


COMMANDS = {"data": run_data, "inspect": run_inspect, "train": run_train, "sample": run_sample}


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # for --nproc to pass on
    try:
        COMMANDS[args.command](args)
    except UserError as exc:
        fail(str(exc))
    except TrainingInterrupted as exc:
        print(f"tinygpt: {exc}", file=sys.stderr)
        sys.exit(128 + exc.signum)
    except OSError as exc:  # a full disk or a read-only folder, outside checkpoint writes
        where = f" ({exc.filename})" if exc.filename else ""
        fail(f"{exc.strerror or exc}{where}")
    except KeyboardInterrupt:
        print("tinygpt: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # e.g. `tinygpt sample RUN | head`
        sys.exit(0)
