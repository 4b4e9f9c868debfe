"""What a newcomer meets in the first hour: full disks, pipes, early Ctrl-C, odd corpora,
messages that point the right way, and a run that says what it does."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import tinygpt.training.loop as engine
from tinygpt.cli import unescape
from tinygpt.config import RunConfig, resolve
from tinygpt.rundir import RunDir, list_checkpoints
from tinygpt.training.runs import resume, train

from .conftest import HOW_TO_PROVIDE, REPO, tinygpt

BIGRAM = ("--preset", "bigram", "--train.eval_batches", "2", "--train.sample_tokens", "0")


def child_env() -> dict[str, str]:
    """The environment of a tinygpt child process: this test's cache, the package importable."""
    return {**os.environ, "PYTHONPATH": str(REPO / "src")}


@contextlib.contextmanager
def tmpfs(path: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """A real small (or read-only) file system at `path`, or a skip where none can be made."""
    path.mkdir()
    options = f"size={size}" + (",ro" if read_only else "")
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.decode().strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


# --- 1. a full disk --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "options"),
    [
        ("1m", ("--preset", "cpu-baby", "--steps", "1")),  # safetensors' own error
        ("120k", ("--preset", "bigram", "--steps", "3000")),  # torch.save's RuntimeError
    ],
)
def test_a_full_disk_is_one_line_and_exit_2(cli, shakespeare, tmp_path, size, options) -> None:
    with tmpfs(tmp_path / "small", size) as small:
        code, _, err = cli("train", *options, "--out", small / "run")
        assert code == 2, err
        assert err.count("\n") == 1 and "No space left on device" in err, err
        leftovers = list((small / "run").glob("checkpoints/.*"))
        assert not leftovers  # nothing half-written


# --- 2. a broken pipe ------------------------------------------------------------------


def read_one_line_and_close(command: list[str]) -> tuple[int, str]:
    """Run `command | head -1` with a small pipe, so that the writer meets the closed end."""
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    process = subprocess.Popen(command, stdout=write_end, stderr=subprocess.PIPE, env=child_env())
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        reader.readline()
    _, err = process.communicate(timeout=120)
    return process.returncode, err.decode()


def test_a_closed_pipe_ends_quietly(shakespeare, run_dir: Path) -> None:
    code, err = read_one_line_and_close(tinygpt("sample", run_dir, "--max-new-tokens", "20000"))
    assert (code, err) == (0, "")
    code, err = read_one_line_and_close(tinygpt("inspect", "--batch-size", "64"))
    assert (code, err) == (0, "")


# --- 3. escapes in --stop --------------------------------------------------------------


def test_stop_strings_take_the_usual_escapes(cli, run_dir: Path) -> None:
    assert unescape(r"\n\n") == "\n\n"
    assert unescape(r"a\tb\\n\r") == "a\tb\\n\r"
    assert unescape(r"\d stays") == r"\d stays"
    code, full, _ = cli("sample", run_dir, "--max-new-tokens", "400", "--seed", "1")
    assert code == 0 and "\n\n" in full.rstrip("\n")
    code, cut, _ = cli(
        "sample", run_dir, "--max-new-tokens", "400", "--seed", "1", "--stop", r"\n\n"
    )
    assert code == 0 and cut == full.split("\n\n")[0] + "\n"


# --- 4. --resume without a checkpoint --------------------------------------------------


def test_resume_without_a_checkpoint_says_so_and_keeps_the_history(
    shakespeare, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    config = RunConfig.from_dict(
        {"model": {"arch": "bigram", "block_size": 8},
         "train": {"steps": 30, "eval_interval": 10, "eval_batches": 2, "log_interval": 5,
                   "sample_tokens": 0}}
    )  # fmt: skip
    train(config, run_dir, out=io.StringIO())
    history = (run_dir / "metrics.jsonl").read_text()
    shutil.rmtree(run_dir / "checkpoints")
    out = io.StringIO()
    resume(run_dir, out=out)
    assert "no complete checkpoint to resume from; starting it again from step 0" in out.getvalue()
    assert RunDir(run_dir).earlier_metrics.read_text() == history
    assert (run_dir / "metrics.jsonl").read_text().count('"val_loss"') == 4  # steps 0-30 again
    assert list_checkpoints(run_dir)[-1].name == "step-00000030"


# --- 5, 10. messages that point the right way ------------------------------------------


def test_messages_point_the_right_way(cli, shakespeare, tmp_path: Path) -> None:
    code, out, err = cli("data", "--from", tmp_path)
    assert code == 2 and "--from needs a corpus name" in err and out == ""
    code, _, err = cli("data", "tinyshakespeare", "--from", tmp_path)
    assert code == 2 and "is a directory" in err
    code, _, err = cli("inspect", "--block-size", "5000000")
    assert code == 2 and "--block-size" in err and "--model.block_size" not in err
    code, _, err = cli("train", "--stepz", "3")
    assert code == 2 and "`tinygpt train --help`" in err and "did you mean --steps?" in err
    code, _, err = cli("sample", "run", "--temprature", "0.5")
    assert code == 2 and "`tinygpt sample --help`" in err and "did you mean --temperature?" in err
    code, out, _ = cli("--version")
    assert code == 0 and out.startswith("tinygpt 0.")


# --- 6. Ctrl-C at once -----------------------------------------------------------------


def catches_sigterm(pid: int) -> bool:
    """Whether the process has its own SIGTERM handler: tinygpt's, installed first thing."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(
        next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16
    )
    return bool(caught & (1 << (signal.SIGTERM - 1)))


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_an_early_ctrl_c_stops_cleanly_every_time(shakespeare, tmp_path: Path) -> None:
    """SIGINT as soon as tinygpt can catch it, then at random moments while torch loads and
    the run starts: every try ends with status 130, never a finished run or an abort."""
    delays = [0.0, 0.0, 0.0] + [random.Random(i).uniform(0, 1.5) for i in range(7)]
    for i, delay in enumerate(delays):
        run_dir = tmp_path / f"run{i}"
        process = subprocess.Popen(
            tinygpt("train", *BIGRAM, "--steps", "200000", "--out", run_dir),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=child_env(),
        )  # fmt: skip
        while not catches_sigterm(process.pid) and process.poll() is None:
            time.sleep(0.001)
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
        assert process.returncode == 130, (delay, process.returncode, err.decode())
        assert "Traceback" not in err.decode() and "error_already_set" not in err.decode()
        assert err.decode().count("\n") == 1, err.decode()
        if (run_dir / "checkpoints").exists():  # stopped while training: a whole checkpoint
            assert list_checkpoints(run_dir)


# --- 8. --help shows what runs ---------------------------------------------------------


def test_train_help_shows_the_values_that_run(cli) -> None:
    code, out, _ = cli("train", "--help")
    flat = " ".join(out.split())
    assert code == 0 and "cpu-fast (the default on a CPU" in flat
    steps = resolve("cpu-fast").train.steps  # the preset's, not the dataclass's 2,000
    assert steps != RunConfig().train.steps
    assert f"optimizer steps to train for (default: {steps})" in flat
    assert "rotary position encoding instead of learned positions (default: True)" in flat
    code, out, _ = cli("train", "--preset", "cpu-baby", "--help")
    flat = " ".join(out.split())
    assert "optimizer steps to train for (default: 2000)" in flat and "cpu-baby" in flat


# --- 9. progress in a file -------------------------------------------------------------


def test_progress_lines_when_the_output_is_not_a_terminal(shakespeare, tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "PLAIN_PROGRESS_EVERY_S", 0.0)
    config = RunConfig.from_dict(
        {"model": {"arch": "bigram", "block_size": 8},
         "train": {"steps": 20, "eval_interval": 10, "eval_batches": 2, "sample_tokens": 0}}
    )  # fmt: skip
    out = io.StringIO()
    train(config, tmp_path / "run", out=out)
    lines = [line for line in out.getvalue().splitlines() if line.startswith("step ")]
    assert "step 1/20 (5%): loss " in lines[1]
    assert sum("/20 (" in line for line in lines) == 19  # every step but the last, here


# --- 11. sample --output, and a run with only its best checkpoint ----------------------


def test_sample_output_is_checked_before_generating(cli, run_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    code, out, err = cli("sample", run_dir, "--output", tmp_path / "folder")
    assert code == 2 and "is a directory" in err and out == ""
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as read_only:
        code, out, err = cli("sample", run_dir, "--output", read_only / "s.txt")
        assert code == 2 and "read-only" in err and out == ""


def test_a_run_with_only_its_best_checkpoint_samples_from_it(cli, run_dir, tmp_path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    for folder in list_checkpoints(copy):
        shutil.rmtree(folder)
    code, out, err = cli("sample", copy, "--max-new-tokens", "10")
    assert code == 0 and len(out) == 11
    assert "has no step checkpoint left; using its best one" in err


# --- 12. odd corpora -------------------------------------------------------------------


def test_a_corpus_of_one_symbol_is_refused(cli, text_file, tmp_path) -> None:
    code, _, err = cli("train", *BIGRAM, "--data", text_file("\n" * 5000), "--out", tmp_path / "r")
    assert code == 2 and "vocabulary of 1 character" in err
    assert not (tmp_path / "r").exists()


def test_windows_line_endings_become_one_token(cli, text_file) -> None:
    code, out, err = cli("inspect", "--data", text_file("to be,\r\nor not\r\n" * 300))
    assert code == 0 and "Windows line endings (CRLF)" in err and err.count("\n") == 1
    assert "vocab_size = 9" in out  # "\r" is not one of them
    assert cli("inspect", "--data", text_file("to be,\r\nor not\r\n" * 300))[2] == ""  # once


def test_emoji_sequences_get_a_note(cli, text_file) -> None:
    code, _, err = cli("inspect", "--data", text_file("hello 👋🏽 and 🇫🇷 again\n" * 100))
    assert code == 0 and "emoji made of several code points" in err


def test_cached_and_written_files_follow_the_umask(cli, shakespeare, tmp_path, monkeypatch) -> None:
    previous = os.umask(0o022)
    try:
        home = tmp_path / "fresh-home"
        monkeypatch.setenv("TINYGPT_HOME", str(home))
        corpus = shakespeare / "corpora" / "tinyshakespeare" / "input.txt"
        assert cli("data", "tinyshakespeare", "--from", corpus)[0] == 0
        cached = home / "corpora" / "tinyshakespeare" / "input.txt"
        assert stat.S_IMODE(cached.stat().st_mode) == 0o644
        assert cli("train", *BIGRAM, "--steps", "10", "--out", tmp_path / "r")[0] == 0
        (prepared,) = (home / "prepared").iterdir()
        assert stat.S_IMODE(prepared.stat().st_mode) == 0o755
        for folder in (tmp_path / "r" / "checkpoints").iterdir():
            assert stat.S_IMODE(folder.stat().st_mode) == 0o755, folder
    finally:
        os.umask(previous)


# --- 13. a readable start --------------------------------------------------------------


def test_a_run_starts_with_a_short_summary(cli, shakespeare, tmp_path: Path) -> None:
    run_dir = tmp_path / ("a-run-directory-with-a-long-name-" * 4) / "r"  # past any width
    code, out, _ = cli("train", *BIGRAM, "--steps", "10", "--out", run_dir)
    assert code == 0
    lines = out.splitlines()  # paths and commands whole, each on a line of its own
    assert (
        f"run directory: {run_dir}" in lines and f"full config: {run_dir / 'config.json'}" in lines
    )
    assert f"sample with: tinygpt sample {run_dir}" in lines
    head = out.split(f"run directory: {run_dir}")[0]
    assert "config: {" not in head and "n_layer" not in head and "layers" not in head
    assert "preset: bigram" in head
    assert "model: bigram table, 65 x 65; 4,225 parameters" in head
    assert "data: tinyshakespeare: 1,003,854 train and 111,540 val tokens" in head
    assert "training: 10 steps of 256 tokens, AdamW" in head
    assert "device: cpu, float32" in head
    assert len(head.splitlines()) <= 8 and max(len(line) for line in head.splitlines()) < 120
    config = json.loads((run_dir / "config.json").read_text())
    assert config["train"]["steps"] == 10  # the whole config is still saved


# --- 7. the test suite finds its corpus, or stops at once --------------------------------


def run_suite_copy(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    """pytest on a copy of this conftest and one test, in a folder with nothing beside it."""
    repo = tmp_path / "fresh" / "tinygpt"
    (repo / "tests").mkdir(parents=True)
    shutil.copy(REPO / "tests" / "conftest.py", repo / "tests")
    (repo / "tests" / "__init__.py").write_text("")
    (repo / "tests" / "test_one.py").write_text(
        "def test_corpus(shakespeare_path):\n"
        "    assert shakespeare_path.stat().st_size == 1115394\n"
    )
    cache = tmp_path / "user-cache"
    clean = {k: v for k, v in child_env().items() if not k.startswith("TINYGPT_")}
    clean.update(XDG_CACHE_HOME=str(cache), HOME=str(tmp_path / "home"), **env)
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=repo, env=clean, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return result, time.monotonic() - start


def test_the_suite_finds_its_corpus_or_stops_at_once(shakespeare_path, tmp_path) -> None:
    result, seconds = run_suite_copy(tmp_path / "a", TINYGPT_TEST_CORPUS=str(tmp_path / "none"))
    assert result.returncode == 2 and seconds < 60
    assert "TINYGPT_TEST_CORPUS" in result.stdout and "is not a file" in result.stdout
    # nothing anywhere, and no way out (a proxy that refuses): one line saying what to do
    refused = "http://127.0.0.1:9"  # the discard port: nothing listens there
    proxies = {"https_proxy": refused, "HTTPS_PROXY": refused, "no_proxy": "", "NO_PROXY": ""}
    result, seconds = run_suite_copy(tmp_path / "b", **proxies)
    assert result.returncode == 2 and seconds < 90
    assert "could not be downloaded" in result.stdout and HOW_TO_PROVIDE in result.stdout
    # after `tinygpt data tinyshakespeare --from FILE`, the user's cache is where it looks
    cached = tmp_path / "c" / "user-cache" / "tinygpt" / "corpora" / "tinyshakespeare"
    cached.mkdir(parents=True)
    shutil.copy(shakespeare_path, cached / "input.txt")
    result, _ = run_suite_copy(tmp_path / "c")
    assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout


def test_the_summary_prints_paths_and_commands_whole_at_any_width(
    shakespeare, tmp_path: Path
) -> None:
    """At 60 columns and at 200 the summary is the same text: a path or a command is never
    cut over lines, so each can be copied as it stands."""
    out = tmp_path / "a-run-folder-with-a-name-long-enough-to-pass-sixty-columns" / "r"
    printed = {}
    for columns in (60, 200):
        result = subprocess.run(
            tinygpt("train", "--preset", "bigram", "--steps", "10", "--train.eval_interval",
                    "10", "--train.sample_tokens", "0", "--out", out, "--overwrite"),
            capture_output=True, text=True, env={**os.environ, "COLUMNS": str(columns)},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        printed[columns] = result.stdout
    assert printed[60] == printed[200]
    lines = printed[60].splitlines()
    assert f"run directory: {out}" in lines and f"full config: {out / 'config.json'}" in lines
    assert f"saved in {out}" in lines and f"sample with: tinygpt sample {out}" in lines
    assert len(str(out)) > 60
