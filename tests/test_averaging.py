"""A moving average of the weights (optim.ema): what a run scores, saves and resumes from."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from torch import nn

from tinygpt.checkpoint import load_checkpoint, load_train_state
from tinygpt.config import RunConfig
from tinygpt.errors import UserError
from tinygpt.evaluate import split_loss
from tinygpt.rundir import list_checkpoints
from tinygpt.training.averaging import moving_average
from tinygpt.training.loop import training_session
from tinygpt.training.runs import resume, train

from .conftest import assert_same_weights, metrics, tiny_config, tiny_values


def test_the_average_is_a_mean_at_first_then_moves_a_fraction_of_the_way() -> None:
    model = nn.Linear(3, 2)
    start = model.weight.detach().clone()
    average = moving_average(model, decay=0.9)
    average.update_parameters(model)  # the first update copies
    with torch.no_grad():
        model.weight.add_(1.0)
    average.update_parameters(model)  # a plain mean of the two so far
    expected = start + 0.5
    torch.testing.assert_close(average.module.weight, expected)
    average.n_averaged.fill_(1000)  # past 1 / (1 - decay) updates: the decay itself
    with torch.no_grad():
        model.weight.add_(1.0)
    average.update_parameters(model)
    torch.testing.assert_close(average.module.weight, expected + 0.1 * (start + 2 - expected))
    torch.testing.assert_close(model.weight, start + 2)  # the trained weights are untouched


def ema_config(**train: object) -> RunConfig:
    return tiny_config(optim={"ema": 0.9}, **train)


def test_a_run_scores_and_saves_the_average_and_keeps_its_own_weights_to_resume(
    shakespeare, tmp_path: Path
) -> None:
    train(ema_config(steps=20), tmp_path / "run", out=io.StringIO())
    (folder,) = list_checkpoints(tmp_path / "run")[-1:]
    checkpoint = load_checkpoint(folder)
    saved = dict(checkpoint.model.named_parameters())
    trained = load_train_state(folder)["trained_weights"]
    assert saved and saved.keys() <= trained.keys()  # the trained state: buffers too
    assert all(not torch.equal(saved[name], trained[name]) for name in saved)
    # the val loss logged at the end is the saved (averaged) model's
    last = [line for line in metrics(tmp_path / "run") if "val_loss" in line][-1]
    assert checkpoint.metrics["val_loss"] == last["val_loss"]
    with training_session(ema_config(steps=20)) as session:
        val = session.data.val
    whole = split_loss(checkpoint.model, val, 16, 64, torch.device("cpu"))
    assert whole == pytest.approx(last["whole_val_loss"], abs=1e-5)


def test_a_run_with_an_average_resumes_bit_for_bit(shakespeare, tmp_path: Path) -> None:
    config = ema_config(steps=30)
    train(config, tmp_path / "whole", out=io.StringIO())
    train(config, tmp_path / "split", out=io.StringIO(), until=20)
    resume(tmp_path / "split", out=io.StringIO())
    assert_same_weights(tmp_path / "whole", tmp_path / "split")  # the averages
    own = [load_train_state(list_checkpoints(tmp_path / run)[-1]) for run in ("whole", "split")]
    assert own[0]["averaged_steps"] == own[1]["averaged_steps"] == 30
    for name, tensor in own[0]["trained_weights"].items():
        assert torch.equal(tensor, own[1]["trained_weights"][name]), name


def test_an_average_without_a_decay_below_one_is_refused() -> None:
    with pytest.raises(UserError, match=r"optim.ema must be in \[0, 1\)"):
        RunConfig.from_dict(tiny_values(optim={"ema": 1.0}))
