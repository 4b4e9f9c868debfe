"""One run, one writer: a run directory's lock, the threads a run takes beside other work,
and an end-of-run score that stays short on a large split."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tinygpt import cpus
from tinygpt.config import RunConfig
from tinygpt.data.corpora import prepare
from tinygpt.errors import UserError
from tinygpt.evaluate import sampled_split_loss, spaced_windows, split_loss
from tinygpt.models import build_model
from tinygpt.rundir import RunDir, RunDirBusy, list_checkpoints, writer_of, writing
from tinygpt.training.runs import resume, train

from .conftest import tinygpt, torchrun_env, wait_until

LONG_BIGRAM = ("--preset", "bigram", "--train.eval_interval", "1000", "--train.sample_tokens", "0")


def logged_steps(run_dir: Path) -> list[int]:
    metrics = RunDir(run_dir).metrics
    if not metrics.exists():
        return []
    return [json.loads(line)["step"] for line in metrics.read_text().splitlines() if line]


def has_checkpoint(run_dir: Path) -> bool:
    return RunDir(run_dir).checkpoints.is_dir() and bool(list_checkpoints(run_dir))


def start_writing(run: Path) -> subprocess.Popen:
    """A bigram run of 10,000 steps into `run`, once it has written its first checkpoint."""
    process = subprocess.Popen(
        tinygpt("train", *LONG_BIGRAM, "--steps", "10000", "--out", run),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    wait_until(lambda: has_checkpoint(run), process, "a first checkpoint")
    return process


def test_a_second_writer_is_refused_while_the_first_keeps_its_record(
    cli, shakespeare, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    first = start_writing(run)
    try:
        config_before = RunDir(run).config.read_text()
        for second in (
            ("train", "--resume", run, "--steps", "60000"),
            ("train", "--preset", "bigram", "--out", run, "--overwrite"),
            ("train", "--preset", "bigram", "--out", run),
        ):
            code, _, err = cli(*second)
            assert code == 2, second
            assert err.count("\n") == 1 and f"PID {first.pid} on " in err, err
            assert "is being written by another tinygpt process" in err
        # readers go on meanwhile, from the newest complete checkpoint
        code, out, _ = cli("sample", run, "--max-new-tokens", "10")
        assert code == 0 and out.strip()
        assert RunDir(run).config.read_text() == config_before
    finally:
        first.wait(timeout=120)
    assert first.returncode == 0, first.stderr.read().decode() if first.stderr else ""
    steps = logged_steps(run)
    assert steps == sorted(steps) and steps[-1] == 10000  # one run's record, in order
    assert [p.name for p in list_checkpoints(run)] == ["step-00009000", "step-00010000"]
    assert not RunDir(run).writer_lock.exists()  # gone with its writer


def test_a_killed_writer_leaves_no_lock_behind(cli, shakespeare, tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = start_writing(run)
    try:
        assert writer_of(run) is not None and writer_of(run).pid == first.pid  # type: ignore[union-attr]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert RunDir(run).writer_lock.exists()  # the file stays; its lock died with the process
    assert writer_of(run) is None
    code, out, err = cli("train", "--resume", run, "--steps", str(logged_steps(run)[-1] + 100))
    assert code == 0, err
    assert "resuming" in out


@pytest.mark.slow
def test_torchrun_takes_one_lock_on_rank_0(cli, shakespeare, tmp_path: Path) -> None:
    run = tmp_path / "run"
    group = subprocess.Popen(
        tinygpt("train", *LONG_BIGRAM, "--steps", "3000", "--out", run, "--nproc", "2"),
        env=torchrun_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: has_checkpoint(run), group, "a first checkpoint", timeout=120)
        writer = writer_of(run)
        assert writer is not None and writer.pid != group.pid  # a rank, not the launcher
        environ = Path(f"/proc/{writer.pid}/environ").read_bytes().split(b"\0")
        assert b"RANK=0" in environ
        code, _, err = cli("train", "--resume", run)
        assert code == 2 and f"PID {writer.pid}" in err
    finally:
        group.wait(timeout=300)
    assert group.returncode == 0, group.stderr.read().decode() if group.stderr else ""


def test_the_lock_file_names_its_holder_and_a_second_lock_fails(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with writing(run):
        writer = writer_of(run)
        assert writer is not None and writer.pid == os.getpid()
        busy = f"PID {os.getpid()} on .*, since 20"
        with pytest.raises(RunDirBusy, match=busy), writing(run):
            pass  # pragma: no cover
        assert RunDir(run).is_empty()  # the lock alone does not make it a run
    assert not run.exists()  # made for the lock, nothing written: gone again


def test_a_failed_new_run_leaves_no_folder(cli, shakespeare, tmp_path: Path) -> None:
    run = tmp_path / "deep" / "run"
    code, _, err = cli("train", "--preset", "bigram", "--data", tmp_path / "none.txt", "--out", run)
    assert code == 2 and err.count("\n") == 1
    assert not (tmp_path / "deep").exists()


def test_a_lock_on_a_file_not_a_folder_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"), writing(tmp_path / "file"):
        pass  # pragma: no cover


# Threads


def test_free_threads_leave_busy_cpus_to_the_work_that_keeps_them() -> None:
    assert cpus.free_threads(2, 0.0) == 2
    assert cpus.free_threads(2, 0.4) == 2  # a little background work takes no CPU away
    assert cpus.free_threads(2, 1.8) == 1
    assert cpus.free_threads(2, 5.0) == 1  # always one
    assert cpus.free_threads(16, 3.6) == 12


def test_a_launchers_thread_count_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpus.choose_threads() == (3, "")


def test_busy_cpus_sees_a_busy_process() -> None:
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert cpus.busy_cpus(0.3) > 0.7
    finally:
        spinner.kill()
        spinner.wait()


def test_a_busy_machine_gets_fewer_threads_and_a_resume_repeats_the_count(
    shakespeare, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpus, "usable_cpus", lambda: 4)
    threads_before = torch.get_num_threads()
    config = RunConfig.from_dict(
        {"model": {"arch": "bigram"}, "train": {"steps": 20, "eval_interval": 10,
                                                 "eval_batches": 2, "sample_tokens": 0}}
    )  # fmt: skip
    monkeypatch.setattr(cpus, "busy_cpus", lambda: 2.7)
    train(config, tmp_path / "run", out=io.StringIO(), until=10)
    assert "training with 1 of the 4" in capsys.readouterr().err
    assert RunDir(tmp_path / "run").read_config().train.threads == 1
    assert torch.get_num_threads() == threads_before  # given back
    monkeypatch.setattr(cpus, "busy_cpus", lambda: 0.0)  # a quiet machine now: still 1
    resume(tmp_path / "run", out=io.StringIO())
    assert RunDir(tmp_path / "run").read_config().train.threads == 1
    assert capsys.readouterr().err == ""


# The end of a run on a large split


def test_spaced_windows_spread_from_the_first_to_the_last() -> None:
    assert spaced_windows(1001, 10, 5) == [0, 250, 500, 740, 990]
    assert spaced_windows(101, 10, 50) == list(range(0, 100, 10))  # all there are
    assert spaced_windows(101, 10, 1) == [0]


def test_a_sampled_val_loss_is_near_the_whole_one_within_its_error(shakespeare) -> None:
    config = RunConfig.from_dict({"model": {"arch": "bigram"}})
    data = prepare(config.data)
    torch.manual_seed(0)
    model = build_model(config.model, data.tokenizer.vocab_size)
    cpu = torch.device("cpu")
    whole = split_loss(model, data.val, 64, 16, cpu)
    sampled = sampled_split_loss(model, data.val, 64, 16, cpu, max_tokens=8192)
    assert sampled.tokens == 8192
    assert 0 < sampled.stderr < 0.05
    assert abs(sampled.loss - whole) < 4 * sampled.stderr


def test_a_long_val_split_is_sampled_at_the_end_and_the_summary_says_so(
    cli, shakespeare, tmp_path: Path
) -> None:
    code, out, err = cli(
        "train", "--preset", "bigram", "--steps", "20", "--train.eval_interval", "10",
        "--train.sample_tokens", "0", "--train.whole_val_tokens", "5000", "--out", tmp_path / "r",
    )  # fmt: skip
    assert code == 0, err
    assert "whole val split" not in out
    line = next(line for line in out.splitlines() if line.startswith("val split, "))
    assert "tokens of evenly spaced windows" in line and "standard error" in line
    assert f"every token: tinygpt eval {tmp_path / 'r'}" in line
    last = json.loads(RunDir(tmp_path / "r").metrics.read_text().splitlines()[-1])
    assert last["sampled_val_tokens"] <= 5000 and last["sampled_val_stderr"] > 0
    assert "whole_val_loss" not in last
