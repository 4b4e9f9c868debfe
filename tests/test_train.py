"""The training engine: exact resume, accumulation, checkpoints kept, metrics and plot."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tinygpt.checkpoint import load_checkpoint
from tinygpt.config import RunConfig, resolve
from tinygpt.errors import UserError
from tinygpt.models.lookback import ngram_log_frequencies
from tinygpt.rundir import RunDir, list_checkpoints
from tinygpt.training.loop import setup, train_step, training_session
from tinygpt.training.runs import resume, train

from .conftest import assert_same_weights, metrics, newest_weights, tiny_config, tiny_values


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_equals_an_uninterrupted_run(shakespeare, tmp_path: Path, optimizer: str) -> None:
    # dropout on: the RNG state must resume too
    config = tiny_config(optim={"optimizer": optimizer}, grad_accum_steps=2)
    train(config, tmp_path / "whole", out=io.StringIO())
    train(config, tmp_path / "split", out=io.StringIO(), until=20)
    assert list_checkpoints(tmp_path / "split")[-1].name == "step-00000020"
    resume(tmp_path / "split", out=io.StringIO())
    assert_same_weights(tmp_path / "whole", tmp_path / "split")  # bit for bit on a CPU

    def without_time(lines: list[dict]) -> list[dict]:
        return [{k: v for k, v in line.items() if k not in ("elapsed_s", "tokens_per_s")}
                for line in lines]  # fmt: skip

    assert without_time(metrics(tmp_path / "whole")) == without_time(metrics(tmp_path / "split"))


def test_gradient_accumulation_matches_one_big_batch(shakespeare) -> None:
    big = setup(tiny_config(batch_size=8, grad_accum_steps=1))
    small = setup(tiny_config(batch_size=4, grad_accum_steps=2))
    for session in (big, small):
        session.model.eval()  # no dropout: compare the arithmetic alone
        session.forward = session.model
    loss_big, norm_big, _ = train_step(big)
    loss_small, norm_small, _ = train_step(small)
    assert loss_big == pytest.approx(loss_small, rel=1e-5)
    assert norm_big == pytest.approx(norm_small, rel=1e-4)
    for a, b in zip(big.model.parameters(), small.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # Adam: ~lr * sign(grad)


def test_run_directory_keeps_best_and_newest(shakespeare, tmp_path: Path) -> None:
    final = train(tiny_config(keep_checkpoints=2), tmp_path / "run", out=io.StringIO())
    names = [p.name for p in list_checkpoints(tmp_path / "run")]
    assert names == ["step-00000030", "step-00000040"]
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best")
    evals = [line for line in metrics(tmp_path / "run") if "val_loss" in line]
    assert best.metrics["val_loss"] == min(line["val_loss"] for line in evals)
    assert final["val_loss"] == evals[-1]["val_loss"]
    steps = [line for line in metrics(tmp_path / "run") if "loss" in line]
    assert all({"lr", "tokens_per_s", "grad_norm"} <= line.keys() for line in steps)
    assert steps[0]["lr"] == 3e-3 > steps[-1]["lr"]  # warmed up at step 5, then decaying
    png = (tmp_path / "run" / "loss.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


COMPILED = [
    pytest.param(name, marks=pytest.mark.slow) for name in ("cpu-5min", "cpu-10min", "gpu-fast")
]
SPEED_PRESETS = ["cpu-fast", *COMPILED]


@pytest.mark.parametrize("preset", SPEED_PRESETS)
def test_the_speed_presets_resume_bit_for_bit(shakespeare, tmp_path: Path, preset: str) -> None:
    # the presets' own recipes (Muon, smear and the pair table, value embeddings, a compiled
    # model), only shortened
    threads = torch.get_num_threads()
    # the thread count pinned: left to choose, each run would take the CPUs that other work
    # leaves free at its start, and a count that differs between the two runs splits sums
    # differently (the resumed half repeats its own run's count, not the other run's)
    short = {"steps": 8, "eval_interval": 4, "eval_batches": 2, "log_interval": 2,
             "sample_tokens": 0, "whole_val": False, "device": "cpu",
             "threads": threads}  # fmt: skip
    overrides: dict = {"train": short}
    if preset == "gpu-fast":  # its switches, on a model small enough for a CPU
        short["batch_size"] = 2
        overrides["model"] = {"block_size": 32, "n_layer": 2}
    config = resolve(preset, overrides=overrides)
    train(config, tmp_path / "whole", out=io.StringIO())
    # a compiled CPU run switches deterministic algorithms on for itself, and off at its end
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.get_num_threads() == threads
    train(config, tmp_path / "split", out=io.StringIO(), until=4)
    resume(tmp_path / "split", out=io.StringIO())
    assert_same_weights(tmp_path / "whole", tmp_path / "split")


def test_a_new_run_starts_its_pair_table_from_the_train_splits_counts(
    shakespeare, tmp_path: Path
) -> None:
    switches = {"ngram": 3, "ngram_counts": 0.35, "zero_init": True, "tie_weights": False}
    with training_session(tiny_config(switches)) as session:
        counted = ngram_log_frequencies(session.data.train, 3, 65)
        torch.testing.assert_close(session.model.ngram.weight, 0.35 * counted)
    train(tiny_config(switches, steps=10), tmp_path / "run", out=io.StringIO())
    first = next(line for line in metrics(tmp_path / "run") if "val_loss" in line)
    assert first["step"] == 0 and first["val_loss"] < 3.0 < math.log(65)  # a trigram's start


def test_a_training_session_gives_the_process_its_threads_back_however_it_ends(
    shakespeare,
) -> None:
    before = torch.get_num_threads()
    other = 1 if before > 1 else 2
    config = tiny_config(threads=other)
    with pytest.raises(RuntimeError, match="a failure inside"), training_session(config) as run:
        assert torch.get_num_threads() == other == run.config.train.threads
        raise RuntimeError("a failure inside")
    assert torch.get_num_threads() == before


def test_the_sample_leaves_the_plotting_child_a_core_and_gives_the_threads_back(
    shakespeare, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tinygpt.training.runs as runs

    seen, stream_text = [], runs.stream_text

    def counting_threads(*args: Any, **kwargs: Any) -> Iterator[str]:
        for piece in stream_text(*args, **kwargs):
            seen.append(torch.get_num_threads())
            yield piece

    monkeypatch.setattr(runs, "stream_text", counting_threads)
    before = torch.get_num_threads()
    out = io.StringIO()
    train(tiny_config(threads=2, sample_tokens=20), tmp_path / "run", out=out)
    assert "--- sample ---" in out.getvalue() and seen and set(seen) == {1}
    assert RunDir(tmp_path / "run").loss_plot.stat().st_size > 0  # drawn meanwhile
    assert torch.get_num_threads() == before


def test_step_0_of_a_zero_initialised_head_is_scored_without_a_pass(
    shakespeare, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tinygpt.training.loop as loop

    passes, estimate_loss = [], loop.estimate_loss

    def counted(*args: Any, **kwargs: Any) -> dict[str, float]:
        passes.append(1)
        return estimate_loss(*args, **kwargs)

    monkeypatch.setattr(loop, "estimate_loss", counted)
    config = tiny_config({"zero_init": True, "tie_weights": False}, steps=20)
    train(config, tmp_path / "run", out=io.StringIO())
    evaluations = [line for line in metrics(tmp_path / "run") if "val_loss" in line]
    assert [line["step"] for line in evaluations] == [0, 10, 20] and len(passes) == 2
    first = evaluations[0]
    assert first["val_loss"] == first["train_loss"] == round(math.log(65), 6)
    assert first["val_bpb"] == pytest.approx(math.log2(65))  # a character a token
    assert evaluations[-1]["val_loss"] < 3.5


def test_compile_without_a_compiler_is_one_line(
    cli, shakespeare, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))
    monkeypatch.delenv("CXX", raising=False)
    code, _, err = cli("train", "--preset", "cpu-5min", "--out", tmp_path / "run")
    assert code == 2 and err.count("\n") == 1
    assert "--train.compile true needs a C++ compiler" in err
    assert not (tmp_path / "run").exists()


def test_resume_errors(shakespeare, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="nothing does not exist"):
        resume(tmp_path / "nothing")
    train(tiny_config(steps=10), tmp_path / "done", out=io.StringIO())
    with pytest.raises(UserError, match="already finished 10 steps"):
        resume(tmp_path / "done")
    with pytest.raises(UserError, match="pass more than 10"):
        resume(tmp_path / "done", steps=5)  # --steps is the total, not a number to add
    resume(tmp_path / "done", steps=20, out=io.StringIO())  # a longer total goes on
    assert list_checkpoints(tmp_path / "done")[-1].name == "step-00000020"


def test_resume_from_the_command_line(cli, shakespeare, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    config = tmp_path / "tiny.toml"
    config.write_text(
        "[model]\narch='gpt'\nblock_size=16\nn_layer=1\nn_head=2\nn_embd=16\n"
        "[train]\nsteps=10\nbatch_size=4\neval_interval=5\neval_batches=2\nsample_tokens=0\n"
    )
    assert cli("train", "--config", config, "--out", run_dir)[0] == 0
    code, _, err = cli("train", "--resume", run_dir, "--model.n_layer", "3")
    assert code == 2 and "only --steps may be given" in err
    code, out, _ = cli("train", "--resume", run_dir, "--steps", "15")
    assert code == 0 and "resuming" in out and "from step 10" in out
    code, out, _ = cli("sample", run_dir, "--max-new-tokens", "40", "--prompt", "KING")
    assert code == 0 and out.startswith("KING") and len(out) == len("KING") + 40 + 1


def test_bfloat16_autocast_trains_on_cpu(shakespeare, tmp_path: Path) -> None:
    final = train(tiny_config(dtype="bfloat16", steps=10), tmp_path / "run", out=io.StringIO())
    assert torch.isfinite(torch.tensor(final["val_loss"]))
    assert load_checkpoint(tmp_path / "run").model.wte.weight.dtype == torch.float32


def test_every_preset_builds_its_model(shakespeare) -> None:
    from tinygpt.config import preset_names

    for name in preset_names():
        session = setup(resolve(preset=name))
        _, loss = session.model(*[t[:, :8] for t in (torch.zeros(1, 8, dtype=torch.long),) * 2])
        assert loss is not None and torch.isfinite(loss)


@pytest.mark.slow
def test_compiled_model_trains(shakespeare, tmp_path: Path) -> None:
    final = train(tiny_config(compile=True, steps=10), tmp_path / "run", out=io.StringIO())
    assert torch.isfinite(torch.tensor(final["val_loss"]))
    names = newest_weights(tmp_path / "run").keys()
    assert "blocks.0.mlp.c_fc.weight" in names  # saved without the _orig_mod. prefix
    assert not any(name.startswith("_orig_mod") for name in names)


def test_a_pair_table_too_big_for_the_vocabulary_is_turned_off_with_a_note(
    shakespeare, tmp_path: Path, capsys
) -> None:
    values = tiny_values({"ngram": 3}, data={"tokenizer": "byte"}, steps=4, eval_interval=2)
    train(RunConfig.from_dict(values), tmp_path / "run", out=io.StringIO(), until=2)
    assert "model.ngram 3 is off" in capsys.readouterr().err  # 257 x 256 x 256 logits
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["ngram"] == 0
    resume(tmp_path / "run", out=io.StringIO())  # the saved run builds the model that ran
    assert "ngram.weight" not in newest_weights(tmp_path / "run")
    values["data"] = {"tokenizer": "char"}
    train(RunConfig.from_dict(values), tmp_path / "char", out=io.StringIO(), until=2)
    assert "ngram.weight" in newest_weights(tmp_path / "char")
    assert "is off" not in capsys.readouterr().err
