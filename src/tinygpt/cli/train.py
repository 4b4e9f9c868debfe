"""`tinygpt train`: a new run, a resumed one, a fine-tune, or the same under torchrun
(`--nproc N`); its help shows the values of the preset that would run."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from tinygpt.cli.parsing import add_config_options, config_overrides, fail, option_value
from tinygpt.config import RunConfig, preset_names, resolve
from tinygpt.errors import UserError


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


def default_preset() -> str:
    """The fast recipe for this machine: cpu-fast on a CPU, gpu-fast where there is a CUDA GPU."""
    import torch

    return "gpu-fast" if torch.cuda.is_available() else "cpu-fast"


def describe_source(preset: str | None, config_file: Path | None) -> str:
    """Where a run's settings come from, in words: `cpu-fast (the default on a CPU)`."""
    if config_file is not None:
        return f"{preset} + {config_file}" if preset else str(config_file)
    if preset is not None:
        return preset
    where = "a CUDA GPU" if default_preset() == "gpu-fast" else "a CPU"
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
    check_no_writer(args.resume or args.out)
    if args.out is not None and args.resume is None:
        from tinygpt.rundir import check_run_dir

        check_run_dir(args.out, args.overwrite)  # here too, rather than in every process
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


def check_no_writer(run_dir: Path | None) -> None:
    """Refuse here, once, a run directory that another process is writing: under torchrun
    rank 0 would refuse it alone and the group's other ranks end in torchrun's report."""
    from tinygpt.rundir import RunDirBusy, writer_of

    if run_dir is not None and (writer := writer_of(run_dir)) is not None:
        raise RunDirBusy(run_dir, writer)


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
    from tinygpt.runtime import distributed_from_env, under_torchrun
    from tinygpt.training.runs import fine_tune_config, start_or_resume

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
