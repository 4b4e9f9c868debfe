"""Command-line parsing shared by the subcommands: argparse with one-line errors, and
an option for every config field, generated from the dataclasses (`--section.field VALUE`,
and the short aliases), so `--help` is always complete."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from tinygpt.config import RunConfig, choices, field_types, parse_value, section_types, type_name
from tinygpt.errors import unknown_name

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

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        """A value outside an option's choices (a preset, a command, a tokenizer) is answered
        with the nearest names rather than the list of all of them."""
        if action.choices is not None and value not in action.choices:
            what = "command" if action.dest == "command" else "value"
            raise argparse.ArgumentError(action, unknown_name(what, value, action.choices))


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


def option_value(argv: list[str], flag: str) -> str | None:
    """The value of `flag VALUE` or `flag=VALUE` in argv (the last one given), or None."""
    value = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(f"{flag}="):
            value = arg.split("=", 1)[1]
    return value
