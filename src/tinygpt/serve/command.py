"""`tinygpt serve RUN_DIR`: its options and what it does (FastAPI and uvicorn are loaded only
when it runs, so the rest of the command line works without the `serve` extra)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
from pathlib import Path

from tinygpt.errors import UserError, note
from tinygpt.serve.settings import ServeSettings

API_KEY_VARIABLE = "TINYGPT_API_KEY"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ServeSettings()
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run or checkpoint")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1 only)"
    )
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_VARIABLE),
        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_VARIABLE}, else none)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--served-model-name",
        metavar="NAME",
        help="the model's name in /v1/models and in requests (default: the run's folder name)",
    )
    limits = (
        ("--max-batch", int, "max_batch", "choices of requests decoded together, a step for all"),
        ("--queue", int, "queue", "requests waiting for room in the batch before 429"),
        (
            "--stream-interval",
            int,
            "stream_interval",
            "decoding steps a streamed chunk holds after the first token (fewer, larger "
            "chunks for many clients; a finish goes at once)",
        ),
        ("--max-prompt-tokens", int, "max_prompt_tokens", "longest prompt, in tokens"),
        ("--max-tokens", int, "max_tokens", "largest max_tokens a request may ask for"),
        ("--deadline", float, "deadline_s", "seconds of generation per request"),
        ("--max-body-bytes", int, "max_body_bytes", "largest request body"),
    )
    for flag, kind, name, help_text in limits:
        default = getattr(defaults, name)
        parser.add_argument(
            flag, type=kind, dest=name, default=default, help=f"{help_text} (default: {default})"
        )
    parser.add_argument(
        "--quiet", action="store_true", help="no access log line per request (default: one)"
    )
    parser.add_argument(
        "--log-prompts",
        action="store_true",
        help="the access log also shows each prompt's text (default: tokens only)",
    )
    parser.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="allow browser pages from ORIGIN to call the API (repeatable; default: none)",
    )


def run(args: argparse.Namespace) -> None:
    try:
        import uvicorn

        from tinygpt.serve.app import create_app
    except ImportError:
        raise UserError(
            "tinygpt serve needs its extra: pip install -e '.[serve]' (FastAPI and uvicorn)"
        ) from None
    from tinygpt.checkpoint import load_checkpoint
    from tinygpt.runtime import resolve_device
    from tinygpt.serve.engine import Engine

    settings = settings_from(args)
    if args.served_model_name is not None and not args.served_model_name.strip():
        raise UserError("--served-model-name must not be empty")
    check_can_listen(args.host, args.port)
    if not is_loopback(args.host) and not settings.api_key:
        note(
            f"listening on {args.host} without --api-key: anyone who can reach this machine "
            "can use the model; put it behind a proxy with authentication, or give a key"
        )
    checkpoint = load_checkpoint(args.run_dir)
    checkpoint.model.to(resolve_device(args.device))
    name = args.served_model_name or args.run_dir.resolve().name
    engine = Engine(checkpoint, settings, name)
    print(
        f"serving {name} ({served_step(args.run_dir, checkpoint.step)}) on "
        f"http://{args.host}:{args.port}/",
        flush=True,
    )
    try:
        log_line = None if args.quiet else lambda line: print(line, flush=True)
        app = create_app(engine, log_line)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        engine.close()


def served_step(run_dir: Path, step: int) -> str:
    """Which step is served, and whether the run is still training past it."""
    from tinygpt.rundir import writer_of

    if writer_of(run_dir) is None:
        return f"step {step}"
    return (
        f"step {step}, the newest checkpoint of a run still training; restart to serve a newer one"
    )


def check_can_listen(host: str, port: int) -> None:
    """Fail with one line, before the model is loaded, where the server could not listen."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port} is not a port number (0-65535)")
    try:
        address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(address[0], socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address[4])
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def settings_from(args: argparse.Namespace) -> ServeSettings:
    return ServeSettings(
        max_batch=args.max_batch,
        stream_interval=args.stream_interval,
        queue=args.queue,
        max_prompt_tokens=args.max_prompt_tokens,
        max_tokens=args.max_tokens,
        deadline_s=args.deadline_s,
        max_body_bytes=args.max_body_bytes,
        api_key=args.api_key or None,
        cors_origins=tuple(args.cors_origin),
        log_prompts=args.log_prompts,
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
