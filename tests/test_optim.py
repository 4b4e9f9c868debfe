"""Learning-rate schedules at their edges, and the weight-decay groups."""

from __future__ import annotations

import itertools

import pytest

from tinygpt.config import ModelConfig, OptimConfig
from tinygpt.models.gpt import GPT
from tinygpt.optim import lr_at, parameter_groups


def test_warmup_rises_linearly_to_the_peak() -> None:
    config = OptimConfig(lr=1e-3, warmup_steps=100, schedule="constant")
    assert lr_at(0, config, 1000) == pytest.approx(1e-5)
    assert lr_at(49, config, 1000) == pytest.approx(5e-4)
    assert lr_at(99, config, 1000) == pytest.approx(1e-3)
    assert lr_at(100, config, 1000) == lr_at(999, config, 1000) == 1e-3


def test_cosine_decays_from_peak_to_min_lr() -> None:
    config = OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=100, schedule="cosine")
    assert lr_at(100, config, 2000) == pytest.approx(1e-3)
    assert lr_at(1050, config, 2000) == pytest.approx(5.5e-4)  # half way: the mean
    assert lr_at(2000, config, 2000) == pytest.approx(1e-4)
    assert lr_at(5000, config, 2000) == pytest.approx(1e-4)  # past the end: stays at min
    values = [lr_at(s, config, 2000) for s in range(100, 2001)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_warmup_stable_decay() -> None:
    config = OptimConfig(lr=3e-3, min_lr=0.0, warmup_steps=50, schedule="wsd", decay_fraction=0.2)
    assert lr_at(0, config, 1000) == pytest.approx(3e-3 / 50)
    assert lr_at(50, config, 1000) == lr_at(799, config, 1000) == 3e-3  # stable
    assert lr_at(800, config, 1000) == pytest.approx(3e-3)  # decay starts
    assert lr_at(900, config, 1000) == pytest.approx(1.5e-3)
    assert lr_at(1000, config, 1000) == pytest.approx(0.0)


def test_no_warmup_starts_at_the_peak() -> None:
    config = OptimConfig(lr=2e-3, warmup_steps=0, schedule="cosine", min_lr=2e-4)
    assert lr_at(0, config, 10) == pytest.approx(2e-3)


def test_decay_applies_to_matrices_only() -> None:
    model = GPT(ModelConfig(arch="gpt", n_layer=1, n_head=2, n_embd=8, block_size=4), 10)
    decay, no_decay = parameter_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"])
    assert all(p.dim() == 1 for p in no_decay["params"]) and no_decay["params"]
    total = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == total
