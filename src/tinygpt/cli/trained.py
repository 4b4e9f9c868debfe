"""The subcommands that use a trained run: sample, eval, export, import, attention, probs,
plot."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Any, TextIO

from tinygpt.cli.parsing import converter, fail, value_label
from tinygpt.config import EVAL_SPLITS, SampleConfig, check_temperature, field_types
from tinygpt.errors import UserError, note


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
    sample.add_argument(
        "--raw",
        action="store_true",
        help="write bytes that are not UTF-8 as they are (default: escaped, as \\xe4), for "
        "a byte model of a binary file",
    )


def add_eval_command(commands: Any) -> None:
    evaluate = commands.add_parser(
        "eval", help="loss, perplexity and bits per byte of a run on a text", allow_abbrev=False
    )
    evaluate.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run or checkpoint")
    evaluate.add_argument(
        "--data", metavar="NAME|FILE|FOLDER", help="the text to score (default: the run's corpus)"
    )
    evaluate.add_argument(
        "--split", choices=EVAL_SPLITS, default="val", help="val, or all of the text (default: val)"
    )
    evaluate.add_argument("--json", action="store_true", help="print the figures as JSON")
    evaluate.add_argument(
        "--batch-size", type=int, metavar="N", help="windows per forward pass (default: the run's)"
    )
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda, mps or cuda:N")


def add_interop_commands(commands: Any) -> None:
    export = commands.add_parser(
        "export",
        help="a run as a Hugging Face transformers folder (hf) or an ONNX graph (onnx)",
        allow_abbrev=False,
    )
    export.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run or checkpoint")
    export.add_argument(
        "--to", choices=("hf", "onnx"), required=True, help="the format: hf or onnx"
    )
    export.add_argument("--out", type=Path, required=True, metavar="DIR", help="a new folder")
    imports = commands.add_parser(
        "import", help="a Hugging Face GPT-2-family folder as a run", allow_abbrev=False
    )
    imports.add_argument("format", choices=("hf",), help="the format (hf)")
    imports.add_argument("folder", type=Path, metavar="DIR", help="config.json, weights, tokenizer")
    imports.add_argument("--out", type=Path, required=True, metavar="RUN_DIR", help="a new run")


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
    samples = sample(checkpoint, prompt, sampling, args.stop, raw=args.raw)
    if samples.prompt_was_cut:
        note_cut_prompt(checkpoint.config.model.block_size)
    show = write_raw if args.raw else write_shown
    if sampling.num_samples == 1:  # one sample streams as it is written
        show(prompt)
        texts = samples.texts(on_piece=lambda _, piece: show(piece))
        show("\n")
    else:
        texts = samples.texts()
        show(join_samples(texts))
    if args.output is not None:
        write_text(args.output, join_samples(texts), raw=args.raw)
        print_written(args.output, out=sys.stderr)  # stdout holds the samples themselves


def write_shown(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def write_raw(text: str) -> None:
    """Text whose surrogate escapes stand for bytes that are not UTF-8: those bytes."""
    sys.stdout.flush()
    sys.stdout.buffer.write(text.encode("utf-8", errors="surrogateescape"))
    sys.stdout.buffer.flush()


def read_prompt(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"prompt file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read prompt file {path}: {exc}") from None


def write_text(path: Path, text: str, raw: bool = False) -> None:
    """`raw`: the text's surrogate escapes written as the bytes they stand for."""
    try:
        path.write_text(text, encoding="utf-8", errors="surrogateescape" if raw else "strict")
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
    print(f"{layers} layers x {heads} heads over {len(maps.tokens)} tokens")
    print_written(png, html)


def note_cut_prompt(block_size: int) -> None:
    note(f"the prompt is longer than the context; the model sees its last {block_size} tokens")


def run_probs(args: argparse.Namespace) -> None:

    from tinygpt.checkpoint import load_checkpoint
    from tinygpt.files import check_writable
    from tinygpt.viz.probs import next_token, print_rows, save_png

    for temperature in args.temperature:
        check_temperature(temperature)
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
        print_written(args.png)


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
    if args.to == "onnx":
        from tinygpt.onnx_export import CARD_FILE, export_onnx

        out = export_onnx(args.run_dir, args.out)
        print_written(out)
        print("run it with onnxruntime (input_ids -> logits); its model card:")
        print(out / CARD_FILE)
        return
    from tinygpt.hf import export_run

    out = export_run(args.run_dir, args.out)
    print_written(out)
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    if "auto_map" in config:  # the folder carries its own code
        print(f"context: {config['block_size']} tokens (past it, the window slides as in sample)")
        print("load it with transformers.AutoModelForCausalLM.from_pretrained(FOLDER, "
              "trust_remote_code=True); its model card:")  # fmt: skip
    else:
        print(f"context: {config['n_positions']} tokens (a prompt and its new tokens must fit)")
        print("load it with transformers.AutoModelForCausalLM.from_pretrained; its model card:")
    print(out / "README.md")


def run_import(args: argparse.Namespace) -> None:
    from tinygpt.hf import import_folder

    out = import_folder(args.folder, args.out)
    print_written(out)
    print("try it with:")
    print(f"  tinygpt sample {out}")
    print(f"  tinygpt train --init-from {out}")


def run_plot(args: argparse.Namespace) -> None:
    from tinygpt.files import check_writable
    from tinygpt.viz.plot import plot_runs

    check_writable(args.out)
    plot_runs(args.run_dirs, args.out, x=args.x)
    runs = "1 run" if len(args.run_dirs) == 1 else f"{len(args.run_dirs)} runs"
    print(f"{runs} against {args.x}")
    print_written(args.out)


def print_written(*paths: Path, out: TextIO | None = None) -> None:
    """Each file a command wrote, whole on a line of its own (copy-pastable at any width)."""
    for path in paths:
        print(f"wrote {path}", file=out or sys.stdout)
