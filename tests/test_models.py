"""The bigram model: the lecture's contract, its loss at initialisation and after training."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from tinygpt.config import ModelConfig, resolve
from tinygpt.data.corpora import prepare
from tinygpt.evaluate import estimate_loss
from tinygpt.models import build_model
from tinygpt.models.bigram import BigramLanguageModel
from tinygpt.training.runs import train


def test_forward_contract() -> None:
    model = BigramLanguageModel(vocab_size=65)
    idx = torch.randint(65, (4, 8))
    logits, loss = model(idx)
    assert logits.shape == (4, 8, 65) and loss is None
    logits, loss = model(idx, torch.randint(65, (4, 8)))
    assert logits.shape == (4, 8, 65) and loss is not None and loss.dim() == 0
    # a bigram sees one token: the logits at t depend on idx[t] alone
    assert torch.equal(logits[0, 3], model.token_embedding_table.weight[idx[0, 3]])


def test_loss_at_initialisation_is_near_ln_vocab(shakespeare) -> None:
    prepared = prepare(resolve(preset="bigram").data)
    torch.manual_seed(1337)
    model = build_model(ModelConfig(), prepared.tokenizer.vocab_size)
    splits = {"train": prepared.train, "val": prepared.val}

    def estimated(batches_per_forward: int) -> dict[str, float]:
        return estimate_loss(
            model, splits, n_batches=20, batch_size=32, block_size=8, seed=1337,
            device=torch.device("cpu"), batches_per_forward=batches_per_forward,
        )  # fmt: skip

    losses = estimated(1)
    # N(0, 1) logits add about half a nat to the uniform ln(65) = 4.17 (the notebook: 4.55)
    for value in losses.values():
        assert abs(value - math.log(65)) < 0.75
    # scoring 8 batches per forward pass (4 in the last) is a matter of speed, not of the figure
    stacked = estimated(8)
    for split, value in losses.items():
        assert stacked[split] == pytest.approx(value, abs=1e-5)


@pytest.mark.parametrize("ngram", [0, 3])
def test_a_zero_initialised_head_knows_its_loss_without_a_pass(ngram: int) -> None:
    config = ModelConfig(
        block_size=16, n_layer=1, n_head=2, n_embd=32, zero_init=True, tie_weights=False,
        ngram=ngram,
    )  # fmt: skip
    model = build_model(config, 65)
    idx, targets = torch.randint(65, (3, 16)), torch.randint(65, (3, 16))
    _, loss = model(idx, targets)
    assert model.uniform_loss() == math.log(65)
    assert loss is not None and loss.item() == pytest.approx(math.log(65), abs=1e-6)
    weights = [model.lm_head.weight] + ([model.ngram.weight] if ngram else [])
    for weight in weights:  # any one of them trained: the input matters again
        with torch.no_grad():
            weight[5, 7] = 0.1
        assert model.uniform_loss() is None
        with torch.no_grad():
            weight[5, 7] = 0.0
    tied = build_model(dataclasses.replace(config, tie_weights=True), 65)  # the embedding
    assert tied.uniform_loss() is None
    assert BigramLanguageModel(65).uniform_loss() is None


def test_bigram_preset_reaches_the_lecture_loss(shakespeare, tmp_path: Path) -> None:
    config = resolve(preset="bigram", overrides={"train": {"sample_tokens": 0}})
    final = train(config, tmp_path / "run")
    assert final["train_loss"] < 2.55 and final["val_loss"] < 2.55
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    first_eval = next(line for line in lines if "val_loss" in line)
    assert first_eval["step"] == 0 and abs(first_eval["val_loss"] - math.log(65)) < 0.75
    assert lines[-1]["step"] == 10_000
