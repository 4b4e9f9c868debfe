"""The `tinygpt` command line: train, study, sample, evaluate and share small GPT models.

Subcommands: data, inspect, trick, train, sample, eval, export, import, attention, probs,
plot, serve. Every config field is an option (`--section.field VALUE`) generated from the
dataclasses, so `--help` is always complete. A user's mistake ends in one line on stderr
and exit status 2. This module builds the parser and dispatches; each group of subcommands
has its module: parsing (shared), corpus (data, inspect, trick), train, trained (what uses
a trained run), and serve/command.py.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import difflib
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from tinygpt import __version__
from tinygpt.cli.corpus import (
    add_data_command,
    add_inspect_command,
    add_trick_command,
    run_data,
    run_inspect,
    run_trick,
)
from tinygpt.cli.parsing import Parser, add_config_options, config_overrides, fail
from tinygpt.cli.train import add_train_command, default_preset, run_train, train_help_defaults
from tinygpt.cli.trained import (
    add_eval_command,
    add_interop_commands,
    add_sample_command,
    add_viz_commands,
    run_attention,
    run_eval,
    run_export,
    run_import,
    run_plot,
    run_probs,
    run_sample,
    unescape,
)
from tinygpt.config import RunConfig
from tinygpt.cpus import wait_briefly
from tinygpt.errors import Interrupted, UserError
from tinygpt.training.signals import stop_if_requested, stop_request


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


def add_serve_command(commands: Any) -> None:
    from tinygpt.serve import command

    serve = commands.add_parser(
        "serve",
        help="an OpenAI-compatible HTTP server and a web playground for a trained run",
        allow_abbrev=False,
    )
    command.add_arguments(serve)


def run_serve(args: argparse.Namespace) -> None:
    from tinygpt.serve import command

    command.run(args)


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
    owns_process = "torch" not in sys.modules  # the command's own: set before torch loads
    if owns_process:
        wait_briefly()
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


def console() -> NoReturn:
    """The `tinygpt` console script and `python -m tinygpt`: `main`, then the end of the
    process without the interpreter's teardown, which frees every object of every module
    torch loaded one by one for a process that is about to end anyway (0.25 s after
    `import torch` alone on a 2-core CPU; 0.1 s off `tinygpt sample`, measured). Exit
    functions run and output is flushed first, so only the freeing is skipped; an error
    that is a bug still ends in its traceback."""
    status: object = 0
    try:
        main()
    except SystemExit as exc:
        status = exc.code
    end_process(status)


def end_process(status: object) -> NoReturn:
    """Exit as SystemExit(status) would, less the interpreter's teardown."""
    if status is not None and not isinstance(status, int):  # sys.exit("message")
        print(status, file=sys.stderr)
        status = 1
    atexit._run_exitfuncs()  # what modules registered: multiprocessing's, logging's, ...
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BrokenPipeError, ValueError):  # a reader left; closed
            stream.flush()
    os._exit(status or 0)


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


__all__ = [
    "add_config_options",
    "config_overrides",
    "console",
    "default_preset",
    "main",
    "unescape",
]
