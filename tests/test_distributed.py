"""Training on torchrun (DDP over gloo on this CPU): parity with one process, identical
weights on every rank, restarts that resume, and the --nproc launcher."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from tinygpt.rundir import list_checkpoints

from .conftest import tiny_config_file, tiny_values, torchrun_env

HERE = Path(__file__).resolve().parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
# no dropout: the ranks draw different masks, and one process must match two
DDP_MODEL = {"block_size": 32, "dropout": 0.0}
DDP_TRAIN = {"steps": 30, "batch_size": 8, "grad_accum_steps": 2, "log_interval": 1}


def run(command: list[str], **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command, capture_output=True, text=True, check=False, env=torchrun_env(**env)
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def metrics(run_dir: Path, key: str) -> dict[int, float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    return {line["step"]: line[key] for line in lines if key in line}


def test_two_processes_follow_one_and_keep_identical_weights(shakespeare, tmp_path: Path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    worker = str(HERE / "ddp_worker.py")
    for batch_size, folder in ((8, one), (4, two)):  # two ranks of 4: one global batch of 8
        values = tiny_values(DDP_MODEL, **{**DDP_TRAIN, "steps": 12, "batch_size": batch_size})
        (folder / "config.json").write_text(json.dumps(values))
    run([sys.executable, worker, str(one), str(one / "config.json")])
    run([*TORCHRUN, "--nproc-per-node=2", worker, str(two), str(two / "config.json")])
    single = json.loads((one / "rank-0.json").read_text())
    ranks = [json.loads((two / f"rank-{r}.json").read_text()) for r in (0, 1)]
    # every rank sees its half of the same global batch: the mean of the two halves' losses
    # is the single process's loss, up to float rounding in the order of the sums (1e-5)
    for step, loss in enumerate(single):
        assert (ranks[0][step] + ranks[1][step]) / 2 == pytest.approx(loss, rel=1e-5, abs=1e-5)
    weights = [safetensors.torch.load_file(two / f"rank-{r}.safetensors") for r in (0, 1)]
    reference = safetensors.torch.load_file(one / "rank-0.safetensors")
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name  # DDP keeps ranks in lockstep
        torch.testing.assert_close(tensor, reference[name], rtol=1e-4, atol=1e-5)


def test_nproc_matches_one_process_through_the_cli(shakespeare, tmp_path: Path) -> None:
    config = tiny_config_file(tmp_path / "tiny.toml", DDP_MODEL, **DDP_TRAIN)
    tinygpt = [sys.executable, "-m", "tinygpt", "train", "--config", str(config)]
    run([*tinygpt, "--out", str(tmp_path / "one")])
    result = run(
        [*tinygpt, "--nproc", "2", "--train.batch_size", "4", "--out", str(tmp_path / "two")]
    )
    assert result.stdout.count("final: train loss") == 1  # rank 0 alone reports
    for key in ("loss", "val_loss"):
        one, two = metrics(tmp_path / "one", key), metrics(tmp_path / "two", key)
        assert one.keys() == two.keys()
        for step in one:  # the same global batches: equal up to rounding (printed to 1e-6)
            assert two[step] == pytest.approx(one[step], abs=2e-5), (key, step)


def test_a_crashed_rank_restarts_the_group_which_resumes(shakespeare, tmp_path: Path) -> None:
    config = tiny_config_file(tmp_path / "tiny.toml", DDP_MODEL, **DDP_TRAIN)
    run_dir = tmp_path / "run"
    result = run(
        [*TORCHRUN, "--nproc-per-node=2", "--max-restarts=2", "-m", "tinygpt", "train",
         "--config", str(config), "--train.batch_size", "4", "--out", str(run_dir)],
        TINYGPT_FAULT_STEP="1:15",
    )  # fmt: skip
    assert "injected fault on rank 1 at step 15" in result.stderr
    assert f"resuming {run_dir} from step 10" in result.stdout
    assert list_checkpoints(run_dir)[-1].name == "step-00000030"
    steps = [step for step in metrics(run_dir, "loss")]
    assert steps == list(range(1, 31))  # the lines after the checkpoint were written again


def test_a_restart_after_the_last_save_ends_at_once(cli, shakespeare, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    code, _, _ = cli("train", "--preset", "bigram", "--steps", "5", "--out", str(run_dir))
    assert code == 0
    before = (run_dir / "metrics.jsonl").read_text()
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")  # as torchrun sets after a failure
    code, out, _ = cli("train", "--preset", "bigram", "--steps", "5", "--out", str(run_dir))
    assert code == 0 and "already finished; nothing left to do" in out
    assert (run_dir / "metrics.jsonl").read_text() == before


def test_torchrun_needs_a_named_run_directory(cli, shakespeare, monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _, err = cli("train", "--steps", "5")
    assert code == 2 and "name the run directory with --out" in err
    code, _, err = cli("train", "--nproc", "2", "--steps", "5")
    assert code == 2 and "under torchrun, leave it out" in err
    monkeypatch.delenv("WORLD_SIZE")
    code, _, err = cli("train", "--nproc", "0")
    assert code == 2 and "--nproc must be at least 1" in err
