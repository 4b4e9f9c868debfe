"""The `tinygpt` command line: data, inspect, trick, train, sample, eval, export, import,
attention, probs, plot, serve.

Every config field is an option (`--section.field VALUE`) generated from the dataclasses, so
`--help` is always complete. A user's mistake ends in one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from tinygpt import __version__
from tinygpt.config import (
    RunConfig,
    SampleConfig,
    choices,
    field_types,
    parse_value,
    preset_names,
    resolve,
    section_types,
    type_name,
)
from tinygpt.errors import Interrupted, UserError, note
from tinygpt.faults import stop_if_requested, stop_request
from tinygpt.tokenizers import KINDS

SHORTCUTS = {  # short flag -> (config key, metavar, help)
    "--data": ("data.dataset", "NAME|FILE|FOLDER", "registered corpus, UTF-8 text file or folder"),
    "--steps": ("train.steps", "N", "optimizer steps"),
    "--seed": ("train.seed", "N", "seed for weights, batches and sampling"),
    "--init-from": (
        "train.init_from",
        "RUN_DIR",
        "fine-tune: start from a run's weights, model and tokenizer (preset: finetune)",
    ),
}


class Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (no usage block) and exit status 2."""

    commands: dict[str, Parser]  # the subcommands' parsers (on the top-level parser)

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see `{self.prog} --help`)")


def fail(message: str) -> NoReturn:
    print(f"tinygpt: error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(2)


def converter(kind: Any) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        return parse_value(kind, text)

    convert.__name__ = type_name(kind)  # argparse names the type in its error message
    return convert


def value_label(kind: Any) -> str:
    """How --help shows a field's value: its choices, or its type."""
    allowed = choices(kind)
    return "{" + ",".join(allowed) + "}" if allowed else type_name(kind).upper()


def add_config_options(parser: argparse.ArgumentParser, shown: RunConfig) -> None:
    """One `--section.field` option per config field, and the short aliases; the help gives
    each field's value in `shown` (what a run with no such option gets)."""
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
        values = getattr(shown, section)
        for f in dataclasses.fields(section_cls):
            group.add_argument(
                f"--{section}.{f.name}",
                dest=f"{section}.{f.name}",
                type=converter(kinds[f.name]),
                metavar=value_label(kinds[f.name]),
                default=argparse.SUPPRESS,
                help=f"{f.metadata.get('help', '')} (default: {getattr(values, f.name)!r})",
            )


def config_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The dotted options given on the command line, as a nested dict."""
    overrides: dict[str, dict[str, Any]] = {}
    for key, value in vars(args).items():
        if "." in key:
            section, name = key.split(".", 1)
            overrides.setdefault(section, {})[name] = value
    return overrides


def build_parser(shown: RunConfig | None = None, shown_as: str = "") -> Parser:
    """The whole command line; `train --help` shows the values of `shown` (a preset's)."""
    parser = Parser(prog="tinygpt", description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"tinygpt {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    parser.commands = commands.choices  # name -> its parser, for errors in its own words
    add_data_command(commands)
    add_inspect_command(commands)
    add_trick_command(commands)
    add_train_command(commands, shown or RunConfig(), shown_as)
    add_sample_command(commands)
    add_eval_command(commands)
    add_interop_commands(commands)
    add_viz_commands(commands)
    add_serve_command(commands)
    return parser


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


def add_train_command(commands: Any, shown: RunConfig, shown_as: str) -> None:
    train = commands.add_parser(
        "train",
        help="train a model into a run directory",
        description=f"Train a model into a run directory. {shown_as}",
        allow_abbrev=False,
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
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="train with N processes on this machine (launches torchrun; default: 1)",
    )
    add_config_options(train, shown)


def add_sample_command(commands: Any) -> None:
    sample = commands.add_parser(
        "sample", help="generate text from a trained run", allow_abbrev=False
    )
    sample.add_argument(
        "run_dir", type=Path, metavar="RUN_DIR", help="a run directory or checkpoint"
    )
    prompt = sample.add_mutually_exclusive_group()
    prompt.add_argument(
        "--prompt",
        default="",
        help="text to continue (default: the start of a document: end-of-text, or a newline)",
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
            metavar=value_label(kind),
            help=f"{f.metadata['help']} (default: {f.default!r})",
        )
    sample.add_argument(
        "--stop",
        action="append",
        default=[],
        type=unescape,
        metavar="TEXT",
        help="end a sample where TEXT appears (repeatable; TEXT is not shown; "
        r"\n, \t, \r and \\ stand for a newline, a tab, a carriage return, a backslash)",
    )
    sample.add_argument("--output", type=Path, metavar="FILE", help="also write the text to FILE")


def add_eval_command(commands: Any) -> None:
    from tinygpt.evaluate import SPLITS

    evaluate = commands.add_parser(
        "eval", help="loss, perplexity and bits per byte of a run on a text", allow_abbrev=False
    )
    evaluate.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run or checkpoint")
    evaluate.add_argument(
        "--data", metavar="NAME|FILE|FOLDER", help="the text to score (default: the run's corpus)"
    )
    evaluate.add_argument(
        "--split", choices=SPLITS, default="val", help="val, or all of the text (default: val)"
    )
    evaluate.add_argument("--json", action="store_true", help="print the figures as JSON")
    evaluate.add_argument(
        "--batch-size", type=int, metavar="N", help="windows per forward pass (default: the run's)"
    )
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda, mps or cuda:N")


def add_interop_commands(commands: Any) -> None:
    export = commands.add_parser(
        "export", help="a run as a Hugging Face transformers model folder", allow_abbrev=False
    )
    export.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run or checkpoint")
    export.add_argument("--to", choices=("hf",), required=True, help="the format (hf)")
    export.add_argument("--out", type=Path, required=True, metavar="DIR", help="a new folder")
    imports = commands.add_parser(
        "import", help="a Hugging Face GPT-2-family folder as a run", allow_abbrev=False
    )
    imports.add_argument("format", choices=("hf",), help="the format (hf)")
    imports.add_argument("folder", type=Path, metavar="DIR", help="config.json, weights, tokenizer")
    imports.add_argument("--out", type=Path, required=True, metavar="RUN_DIR", help="a new run")


def add_serve_command(commands: Any) -> None:
    from tinygpt.serve import command

    serve = commands.add_parser(
        "serve",
        help="an OpenAI-compatible HTTP server and a web playground for a trained run",
        allow_abbrev=False,
    )
    command.add_arguments(serve)


def add_viz_commands(commands: Any) -> None:
    attention = commands.add_parser(
        "attention", help="the attention maps of a trained model for a prompt", allow_abbrev=False
    )
    attention.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run or checkpoint")
    attention.add_argument("--prompt", required=True, help="the text whose attention is shown")
    attention.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="FILE",
        help="writes FILE.png (every layer and head) and FILE.html (pick layer and head)",
    )
    probs = commands.add_parser(
        "probs", help="the next-token distribution after a prompt", allow_abbrev=False
    )
    probs.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run or checkpoint")
    probs.add_argument("--prompt", default="", help="the text so far (default: token 0)")
    probs.add_argument(
        "--temperature",
        type=float,
        nargs="+",
        default=[1.0],
        metavar="T",
        help="one or several temperatures (0: greedy; default: 1)",
    )
    probs.add_argument("--top-k", type=int, default=10, help="tokens to list (default: 10)")
    probs.add_argument("--png", type=Path, metavar="FILE", help="also draw the bars into FILE")
    plot = commands.add_parser(
        "plot", help="the val loss of several runs in one picture", allow_abbrev=False
    )
    plot.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="runs to draw")
    plot.add_argument("--out", type=Path, required=True, metavar="FILE", help="the PNG to write")
    plot.add_argument(
        "--x", choices=("step", "time"), default="step", help="against step or training time"
    )


ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def unescape(text: str) -> str:
    r"""`\n`, `\t`, `\r` and `\\` as the characters they stand for (a shell passes `"\n"` as
    a backslash and an n); any other backslash stays as it is."""
    return re.sub(r"\\([ntr\\])", lambda m: ESCAPES[m.group(1)], text)


def run_data(args: argparse.Namespace) -> None:
    from tinygpt import data

    if args.name is None and args.source is not None:
        fail(f"--from needs a corpus name: tinygpt data NAME --from {args.source}")
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
    from tinygpt.walkthrough import print_trick

    print_trick(sys.stdout, png_dir=args.png)


def default_preset() -> str:
    """The fast CPU recipe on a CPU; nanoGPT's GPU recipe where there is a GPU."""
    import torch

    return "shakespeare-char" if torch.cuda.is_available() else "cpu-fast"


def describe_source(preset: str | None, config_file: Path | None) -> str:
    """Where a run's settings come from, in words: `cpu-fast (the default on a CPU)`."""
    if config_file is not None:
        return f"{preset} + {config_file}" if preset else str(config_file)
    if preset is not None:
        return preset
    where = "a CUDA GPU" if default_preset() == "shakespeare-char" else "a CPU"
    return f"{default_preset()} (the default on {where}; choose another with --preset)"


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
    from tinygpt.runtime import under_torchrun

    if under_torchrun():
        fail("--nproc starts torchrun itself; under torchrun, leave it out")
    if args.resume is None:  # a bad option fails here, once, rather than in every process
        resolve(
            args.preset or (None if args.config else default_preset()),
            args.config,
            config_overrides(args),
        )
    argv = without_option(args.argv, "--nproc")
    if args.out is None and args.resume is None:  # every process must agree on the name
        argv += ["--out", str(default_run_dir(args.preset or default_preset()))]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={args.nproc}",
        "-m",
        "tinygpt",
        *argv,
    ]
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
    from tinygpt.runs import fine_tune_config, start_or_resume
    from tinygpt.runtime import distributed_from_env, under_torchrun

    overrides = config_overrides(args)
    if under_torchrun() and args.out is None and args.resume is None:
        fail("under torchrun, name the run directory with --out (restarts resume from it)")
    if args.resume is not None:
        steps = overrides.get("train", {}).pop("steps", None)
        if any(overrides.values()) or args.preset or args.config or args.out or args.overwrite:
            fail("--resume continues a run with its own config; only --steps may be given")
        start_or_resume(args.resume, steps=steps)
        return
    init_from = overrides.get("train", {}).get("init_from")
    fallback = "finetune" if init_from else default_preset()
    preset = args.preset or (None if args.config else fallback)
    config = resolve(preset, args.config, overrides)
    if config.train.init_from:
        config = fine_tune_config(config, overrides)
    if distributed_from_env().is_main:
        source = describe_source(args.preset, args.config)
        if init_from and args.preset is None and args.config is None:
            source = "finetune (the default with --init-from; choose another with --preset)"
        print(f"preset: {source}")
    run_dir = args.out or default_run_dir(preset or args.config.stem)
    start_or_resume(run_dir, config, overwrite=args.overwrite)


def run_sample(args: argparse.Namespace) -> None:
    from tinygpt.checkpoint import load_checkpoint
    from tinygpt.files import check_writable
    from tinygpt.generate import join_samples, sample

    sampling = SampleConfig(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(SampleConfig)}
    )
    prompt = args.prompt if args.prompt_file is None else read_prompt(args.prompt_file)
    if args.output is not None:
        check_writable(args.output)  # before generating, not after
    checkpoint = load_checkpoint(args.run_dir)
    samples = sample(checkpoint, prompt, sampling, args.stop)
    if samples.prompt_was_cut:
        note_cut_prompt(checkpoint.config.model.block_size)
    if sampling.num_samples == 1:  # one sample streams as it is written
        sys.stdout.write(prompt)
        texts = samples.texts(on_piece=lambda _, piece: print(piece, end="", flush=True))
        sys.stdout.write("\n")
    else:
        texts = samples.texts()
        sys.stdout.write(join_samples(texts))
    if args.output is not None:
        write_text(args.output, join_samples(texts))


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


def run_attention(args: argparse.Namespace) -> None:
    from tinygpt.checkpoint import load_checkpoint
    from tinygpt.files import check_writable
    from tinygpt.viz.attention import attention_maps, save_html, save_png

    stem = args.out.with_suffix("") if args.out.suffix in (".png", ".html") else args.out
    png, html = stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".html")
    check_writable(png)
    check_writable(html)
    checkpoint = load_checkpoint(args.run_dir)
    maps = attention_maps(checkpoint, args.prompt)
    if maps.prompt_was_cut:
        note_cut_prompt(checkpoint.config.model.block_size)
    save_png(maps, png)
    save_html(maps, html)
    layers, heads = maps.weights.shape[:2]
    print(f"{layers} layers x {heads} heads over {len(maps.tokens)} tokens: {png}, {html}")


def note_cut_prompt(block_size: int) -> None:
    note(f"the prompt is longer than the context; the model sees its last {block_size} tokens")


def run_probs(args: argparse.Namespace) -> None:
    import math

    from tinygpt.checkpoint import load_checkpoint
    from tinygpt.files import check_writable
    from tinygpt.viz.probs import next_token, print_rows, save_png

    if any(not math.isfinite(t) or t < 0 for t in args.temperature):
        fail("a temperature is 0 (greedy) or positive")
    if args.top_k < 1:
        fail("--top-k must be at least 1")
    if args.png is not None:
        check_writable(args.png)
    checkpoint = load_checkpoint(args.run_dir)
    rows, was_cut = next_token(checkpoint, args.prompt, args.temperature, args.top_k)
    if was_cut:
        note_cut_prompt(checkpoint.config.model.block_size)
    print_rows(rows, sys.stdout)
    if args.png is not None:
        save_png(rows, args.prompt, args.png)


def run_eval(args: argparse.Namespace) -> None:
    import json

    from tinygpt.checkpoint import load_checkpoint
    from tinygpt.evaluate import score_checkpoint
    from tinygpt.runtime import resolve_device

    if args.batch_size is not None and args.batch_size < 1:
        fail("--batch-size must be at least 1")
    device = resolve_device(args.device)
    checkpoint = load_checkpoint(args.run_dir)
    dataset = args.data or checkpoint.config.data.dataset
    score = score_checkpoint(
        checkpoint,
        dataset,
        args.split,
        device=device,
        batch_size=args.batch_size,
        progress=not args.json,
    )
    if args.json:
        about = {"checkpoint": str(checkpoint.path), "step": checkpoint.step}
        print(json.dumps({**about, **score.to_dict()}, indent=1))
        return
    print(f"{checkpoint.path} on {dataset}, {args.split} split: {score.tokens:,} tokens")
    print(score.describe())


def run_export(args: argparse.Namespace) -> None:
    from tinygpt.hf import export_run

    out = export_run(args.run_dir, args.out)
    print(f"exported to {out}; load it with transformers.AutoModelForCausalLM.from_pretrained")


def run_import(args: argparse.Namespace) -> None:
    from tinygpt.hf import import_folder

    out = import_folder(args.folder, args.out)
    print(f"imported into {out}; try: tinygpt sample {out}, or tinygpt train --init-from {out}")


def run_serve(args: argparse.Namespace) -> None:
    from tinygpt.serve import command

    command.run(args)


def run_plot(args: argparse.Namespace) -> None:
    from tinygpt.files import check_writable
    from tinygpt.plot import plot_runs

    check_writable(args.out)
    plot_runs(args.run_dirs, args.out, x=args.x)
    print(f"{len(args.run_dirs)} runs against {args.x}: {args.out}")


COMMANDS = {
    "data": run_data,
    "inspect": run_inspect,
    "trick": run_trick,
    "train": run_train,
    "sample": run_sample,
    "eval": run_eval,
    "export": run_export,
    "import": run_import,
    "serve": run_serve,
    "attention": run_attention,
    "probs": run_probs,
    "plot": run_plot,
}


def main(argv: Sequence[str] | None = None) -> None:
    stop_request.listen()  # first of all: a Ctrl-C during torch's import must stop cleanly
    try:
        run_command(list(sys.argv[1:] if argv is None else argv))
    except BrokenPipeError:  # `tinygpt sample RUN | head`: the reader has all it wants
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # nothing left to flush into the closed pipe
        sys.exit(0)
    except UserError as exc:
        fail(str(exc))
    except Interrupted as exc:
        print(f"tinygpt: {exc}", file=sys.stderr)
        sys.exit(128 + exc.signum)
    except OSError as exc:  # a full disk or a read-only folder, outside checkpoint writes
        where = f" ({exc.filename})" if exc.filename else ""
        fail(f"{exc.strerror or exc}{where}")
    except KeyboardInterrupt:
        print("tinygpt: interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        stop_request.release()


def run_command(argv: list[str]) -> None:
    parser = build_parser(*train_help_defaults(argv))
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        reject_unknown(parser, args.command, unknown)
    args.argv = argv  # for --nproc to pass on
    if args.command != "train":  # training stops at a step boundary; the rest at once
        stop_request.release()
        stop_if_requested()
    COMMANDS[args.command](args)
    sys.stdout.flush()  # a closed pipe is met here, where it is handled, not at exit


def reject_unknown(parser: Parser, command: str, unknown: list[str]) -> NoReturn:
    """An unknown option is reported by its own subcommand, with the nearest known one."""
    subparser = parser.commands[command]
    known = [flag for action in subparser._actions for flag in action.option_strings]
    flag = unknown[0].split("=", 1)[0]
    close = difflib.get_close_matches(flag, known, n=1) if flag.startswith("-") else []
    hint = f"; did you mean {close[0]}?" if close else ""
    subparser.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")


def train_help_defaults(argv: list[str]) -> tuple[RunConfig | None, str]:
    """For `train --help`: the config a run with these --preset/--config options would get,
    and a sentence saying which it is (None elsewhere: only help shows these values)."""
    if not argv or argv[0] != "train" or not {"-h", "--help"} & set(argv):
        return None, ""
    preset = option_value(argv, "--preset")
    config_file = Path(value) if (value := option_value(argv, "--config")) else None
    try:
        config = resolve(preset or (None if config_file else default_preset()), config_file)
    except UserError:
        return None, ""  # parsing the options reports the mistake
    source = describe_source(preset, config_file)
    return config, f"The defaults shown are those of the settings used here: {source}."


def option_value(argv: list[str], flag: str) -> str | None:
    """The value of `flag VALUE` or `flag=VALUE` in argv (the last one given), or None."""
    value = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(f"{flag}="):
            value = arg.split("=", 1)[1]
    return value
