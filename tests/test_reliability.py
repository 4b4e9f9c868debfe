"""No work lost, no input crashes it: signals, kills, resume discovery, bad numbers, full
disks, hostile files, and fuzzed input."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinygpt import checkpoint as checkpoint_module
from tinygpt.checkpoint import load_checkpoint, load_train_state, save_checkpoint
from tinygpt.config import DataConfig, RunConfig
from tinygpt.data.corpora import prepare
from tinygpt.errors import UserError
from tinygpt.rundir import RunDir, list_checkpoints, step_folder
from tinygpt.training.runs import resume, train

from .conftest import tiny_config, tiny_config_file, tinygpt, wait_for_cpu_seconds, wait_until

SMALLER = {"n_layer": 1, "n_embd": 16}  # the runs these tests stop and resume: fast


def wait_for_step(run_dir: Path, step: int, process: subprocess.Popen, timeout: float = 60) -> None:
    def logged() -> bool:
        metrics = run_dir / "metrics.jsonl"
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        return bool(lines) and json.loads(lines[-1])["step"] >= step

    wait_until(logged, process, f"step {step}", timeout)


# --- signals ---------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_at_a_step_boundary_and_the_run_resumes(
    shakespeare, tmp_path: Path, signum: int
) -> None:
    config, run_dir = (
        tiny_config_file(tmp_path / "tiny.toml", SMALLER, steps=20_000, eval_interval=5_000),
        tmp_path / "r",
    )
    process = subprocess.Popen(
        tinygpt("train", "--config", config, "--out", run_dir),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for_step(run_dir, 30, process)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signum
    assert err.count("\n") == 1 and "resume with: tinygpt train --resume" in err, err
    step = int(err.split(" at step ")[1].split(";")[0])
    assert step >= 30 and list_checkpoints(run_dir)[-1].name == f"step-{step:08d}"
    load_train_state(list_checkpoints(run_dir)[-1])
    done = subprocess.run(
        tinygpt("train", "--resume", run_dir, "--steps", step + 10),
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"resuming {run_dir} from step {step}" in done.stdout
    assert list_checkpoints(run_dir)[-1].name == f"step-{step + 10:08d}"


def test_a_second_signal_exits_at_once(shakespeare, tmp_path: Path) -> None:
    config, run_dir = (
        tiny_config_file(tmp_path / "tiny.toml", SMALLER, steps=20_000, eval_interval=5_000),
        tmp_path / "r",
    )
    process = subprocess.Popen(
        tinygpt("train", "--config", config, "--out", run_dir),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for_step(run_dir, 10, process)
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGINT)
    process.wait(timeout=30)
    assert process.returncode in (-signal.SIGINT, 128 + signal.SIGINT)


def terminate_within_seconds(process: subprocess.Popen, seconds: float = 5) -> str:
    """Once the process has worked half a CPU second into what it is doing, SIGTERM; it must
    be gone within `seconds`, with the status of a stop by that signal. Its stderr."""
    wait_for_cpu_seconds(process, 0.5)
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert time.monotonic() - signalled < seconds
    assert process.returncode == 128 + signal.SIGTERM
    return err


def test_a_signal_during_the_sample_after_training_stops_it_at_once(
    shakespeare, tmp_path: Path
) -> None:
    config, run_dir = (
        tiny_config_file(tmp_path / "tiny.toml", SMALLER, steps=5, eval_interval=5),
        tmp_path / "r",
    )
    printed = tmp_path / "stdout.txt"
    with printed.open("w") as stdout:
        process = subprocess.Popen(
            tinygpt("train", "--config", config, "--out", run_dir,
                    "--train.sample_tokens", 1_000_000),  # minutes of sampling
            stdout=stdout, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip

        def sampling() -> bool:  # some of the sample is out: it is generating
            return len(printed.read_text().partition("--- sample ---\n")[2]) > 20

        wait_until(sampling, process, "the sample")
        err = terminate_within_seconds(process)
    assert "during the sample after training; the run is complete" in err
    assert err.count("\n") == 1, err
    assert load_checkpoint(run_dir).step == 5
    assert RunDir(run_dir).loss_plot.read_bytes().startswith(b"\x89PNG")  # drawn meanwhile


@pytest.mark.parametrize("when", ["first", "final"])
def test_a_signal_during_an_evaluation_stops_it_within_seconds(
    shakespeare, tmp_path: Path, when: str
) -> None:
    """An evaluation changes nothing, so a stop abandons it (here: one of a million
    batches, minutes of work) and saves the step it evaluated. `first`: the evaluation
    before step 1; `final`: the whole val split after the last step."""
    config, run_dir = (
        tiny_config_file(tmp_path / "tiny.toml", SMALLER, steps=5, eval_interval=5),
        tmp_path / "r",
    )
    slow = {  # a minute of evaluation or more
        "first": ["--train.eval_batches", 1_000_000],
        "final": ["--model.block_size", 1, "--train.eval_rows", 1],  # 111,539 forward passes
    }[when]
    process = subprocess.Popen(
        tinygpt("train", "--config", config, "--out", run_dir, *slow),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    if when == "first":  # the tokenizer is written, then training starts by evaluating
        wait_until(RunDir(run_dir).tokenizer.exists, process, "the tokenizer")
    else:  # the last estimate is logged, then every val token is scored one at a time
        wait_for_step(run_dir, 5, process)
    err = terminate_within_seconds(process)
    step = 0 if when == "first" else 5
    assert f"at step {step}; checkpoint saved" in err and err.count("\n") == 1, err
    assert load_checkpoint(run_dir).step == step
    logged = [json.loads(line) for line in RunDir(run_dir).metrics.read_text().splitlines()]
    assert not any("whole_val_loss" in record for record in logged)
    if when == "first":
        assert not any("val_loss" in record for record in logged)


# --- kills -----------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_harness_finds_no_corrupt_checkpoint_and_no_mismatch(shakespeare, tmp_path: Path):
    from kill_harness import run_harness

    counts = run_harness(3, 60, 0, "tinyshakespeare", tmp_path, (0.0, 1.0), every=2)
    assert counts["kills"] >= 1
    assert counts["corrupt"] == 0 and counts["mismatches"] == 0, counts


# --- resume discovery ------------------------------------------------------------------


def test_resume_cleans_up_half_written_checkpoints(shakespeare, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    train(tiny_config(SMALLER, steps=40), run_dir, out=io.StringIO(), until=30)
    parent = RunDir(run_dir).checkpoints
    assert [p.name for p in list_checkpoints(run_dir)] == ["step-00000020", "step-00000030"]
    (parent / ".tmp-crashed").mkdir()
    (parent / ".tmp-crashed" / "model.safetensors").write_bytes(b"half")
    (parent / "best").rename(parent / ".old-best")  # a crash in the middle of a swap
    (parent / ".trash-step-00000010").mkdir()  # a crash in the middle of pruning
    (parent / "step-00000031").mkdir()  # a folder with a checkpoint's name but no checkpoint
    (parent / "step-00000031" / "model.safetensors").write_bytes(b"")
    assert list_checkpoints(run_dir)[-1].name == "step-00000030"
    resume(run_dir, out=io.StringIO())
    names = sorted(p.name for p in parent.iterdir())
    assert names == ["best", "step-00000030", "step-00000040"]  # the newest 2, and the best


def test_resume_before_the_first_checkpoint_starts_over(shakespeare, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(tiny_config(SMALLER, steps=10).to_dict()))
    out = io.StringIO()
    resume(run_dir, out=out)
    assert "no complete checkpoint to resume from; starting it again" in out.getvalue()
    assert list_checkpoints(run_dir)[-1].name == "step-00000010"


def test_new_run_over_an_existing_one_needs_saying_so(cli, shakespeare, tmp_path: Path) -> None:
    config = tiny_config_file(tmp_path / "tiny.toml", SMALLER, steps=10)
    assert cli("train", "--config", config, "--out", tmp_path / "r")[0] == 0
    code, _, err = cli("train", "--config", config, "--out", tmp_path / "r")
    assert code == 2 and "already exists" in err and "--resume" in err
    code, _, err = cli("train", "--resume", tmp_path / "nope")
    assert code == 2 and "nope does not exist" in err


# --- numbers ---------------------------------------------------------------------------


def test_non_finite_loss_stops_the_run_before_the_update(cli, shakespeare, tmp_path) -> None:
    config = tiny_config_file(tmp_path / "tiny.toml", SMALLER, steps=50, eval_interval=1)
    code, _, err = cli(
        "train", "--config", config, "--out", tmp_path / "r", "--optim.lr", "1e30",
        "--optim.grad_clip", "0", "--optim.warmup_steps", "0", "--optim.schedule", "constant",
    )  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and "training diverged at step" in err, err
    for folder in list_checkpoints(tmp_path / "r"):
        model = load_checkpoint(folder).model
        assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_nan_is_never_written_into_a_checkpoint(tmp_path: Path) -> None:
    from tinygpt.models import build_model
    from tinygpt.tokenizers import CharTokenizer

    config = tiny_config(SMALLER, steps=20)
    model = build_model(config.model, 5)
    with torch.no_grad():
        model.wte.weight[0, 0] = float("nan")
    with pytest.raises(UserError, match="NaN or infinity"):
        save_checkpoint(
            step_folder(tmp_path, 1),
            model,
            step=1,
            config=config,
            tokenizer=CharTokenizer.from_text("abcde"),
            metrics={},
        )
    assert not list_checkpoints(tmp_path)


def test_gradient_norm_is_logged(shakespeare, tmp_path: Path) -> None:
    train(tiny_config(SMALLER, steps=20), tmp_path / "r", out=io.StringIO())
    lines = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").open()]
    norms = [line["grad_norm"] for line in lines if "loss" in line]
    assert norms and all(n > 0 for n in norms)


# --- disk ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("err", "message"),
    [(errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only file system")],
)
def test_a_failed_write_leaves_the_previous_checkpoint_intact(
    shakespeare, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int, message: str
) -> None:
    run_dir = tmp_path / "run"
    train(tiny_config(SMALLER, steps=10), run_dir, out=io.StringIO())
    before = list_checkpoints(run_dir)

    def broken_disk(*args: object, **kwargs: object) -> None:
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(checkpoint_module.safetensors.torch, "save_model", broken_disk)
    with pytest.raises(UserError, match=message):
        resume(run_dir, steps=20, out=io.StringIO())
    assert list_checkpoints(run_dir) == before
    assert not [p for p in RunDir(run_dir).checkpoints.iterdir() if p.name.startswith(".")]
    load_train_state(before[-1])
    assert load_checkpoint(run_dir).step == 10


def test_an_unwritable_run_directory_is_one_line(cli, shakespeare, tmp_path, monkeypatch) -> None:
    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "r"))

    monkeypatch.setattr(Path, "mkdir", read_only)
    code, _, err = cli(
        "train",
        "--config",
        tiny_config_file(tmp_path / "tiny.toml", SMALLER, steps=10),
        "--out",
        tmp_path / "r",
    )
    assert code == 2 and err.count("\n") == 1 and "Read-only file system" in err


# --- hostile files ---------------------------------------------------------------------


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_is_refused_and_never_runs(shakespeare, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    train(tiny_config(SMALLER, steps=20), run_dir, out=io.StringIO(), until=10)
    marker = tmp_path / "pwned"
    torch.save({"optimizer": Payload(marker)}, list_checkpoints(run_dir)[-1] / "train_state.pt")
    with pytest.raises(UserError, match="refusing to load"):
        resume(run_dir, out=io.StringIO())
    assert not marker.exists()


def test_weights_that_are_not_safetensors_are_refused(tmp_path: Path, shakespeare) -> None:
    run_dir = tmp_path / "run"
    train(tiny_config(SMALLER, steps=10), run_dir, out=io.StringIO())
    marker = tmp_path / "pwned"
    torch.save(Payload(marker), list_checkpoints(run_dir)[-1] / "model.safetensors")
    with pytest.raises(UserError, match="weights do not load"):
        load_checkpoint(run_dir)
    assert not marker.exists()


# --- fuzzing ---------------------------------------------------------------------------

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes_prepare_or_fail_clearly(tmp_path_factory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_bytes(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None:
        text = text.replace("\r\n", "\n")  # Windows line endings are read as one newline
    if not text or len(set(text)) < 2:  # not UTF-8, empty, or nothing to choose between
        with pytest.raises(UserError):
            prepare(DataConfig(dataset=str(path)))
        return
    prepared = prepare(DataConfig(dataset=str(path)))
    ids = [*prepared.train.tolist(), *prepared.val.tolist()]
    assert prepared.tokenizer.decode(ids) == text


config_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
known_keys = st.sampled_from(["model", "train", "optim", "data", "steps", "lr", "n_head", "arch"])


@FUZZ
@given(st.dictionaries(known_keys | st.text(max_size=8), config_values, max_size=4))
def test_any_config_dict_builds_or_fails_clearly(values: dict) -> None:
    try:
        config = RunConfig.from_dict(values)
    except UserError:
        return
    assert RunConfig.from_dict(config.to_dict()) == config


option_names = st.sampled_from(
    ["--steps", "--seed", "--data", "--model.n_layer", "--model.n_embd", "--model.n_head",
     "--optim.lr", "--train.dtype", "--model.arch", "--preset", "--train.device", "--bogus",
     "--model.rotary", "--data.val_fraction", "-x", "--"]
) | st.text(max_size=10).map(lambda s: "--" + s)  # fmt: skip
option_values = st.sampled_from(
    ["0", "-1", "1", "nan", "inf", "1e400", "true", "gpt", ""]
) | st.text(max_size=8)


@FUZZ
@given(st.lists(st.tuples(option_names, option_values), max_size=4))
def test_any_command_line_exits_cleanly(training_replaced, capsys, argv: list) -> None:
    from tinygpt.cli import main

    flat = ["train", *(item for pair in argv for item in pair)]
    try:
        main(flat)
    except SystemExit as exc:
        assert exc.code in (0, 2), (flat, exc.code)
        if exc.code == 2:
            err = capsys.readouterr().err
            assert err.startswith("tinygpt: error: ") and err.count("\n") == 1, (flat, err)


@pytest.fixture(scope="module")
def training_replaced():
    """Training itself is replaced: the fuzzer exercises parsing and validation only."""
    import tinygpt.training.runs

    with pytest.MonkeyPatch.context() as mp:
        fake = {"train_loss": 0.0, "val_loss": 0.0}
        mp.setattr(tinygpt.training.runs, "train", lambda *a, **k: fake)
        mp.setattr(tinygpt.training.runs, "resume", lambda *a, **k: fake)
        yield mp
