"""Checkpoints: round trips, atomic layout, and refusal of what does not match."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

from tinygpt.checkpoint import load_checkpoint, save_checkpoint
from tinygpt.config import RunConfig
from tinygpt.errors import UserError
from tinygpt.models import build_model
from tinygpt.rundir import find_checkpoint, step_folder
from tinygpt.tokenizers import CharTokenizer

TOKENIZER = CharTokenizer.from_text("abcdefgh \n")


CONFIG = RunConfig.from_dict(
    {"model": {"arch": "gpt", "block_size": 8, "n_layer": 2, "n_head": 2, "n_embd": 16}}
)


def saved_run(run_dir: Path, steps: tuple[int, ...] = (5,)) -> torch.nn.Module:
    config = CONFIG
    model = build_model(config.model, TOKENIZER.vocab_size)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict()))
    for step in steps:
        save_checkpoint(
            step_folder(run_dir, step),
            model,
            step=step,
            config=config,
            tokenizer=TOKENIZER,
            metrics={"val_loss": 1.5},
        )
    return model


def test_round_trip_gives_identical_logits(tmp_path: Path) -> None:
    model = saved_run(tmp_path / "run")
    checkpoint = load_checkpoint(tmp_path / "run")
    idx = torch.randint(TOKENIZER.vocab_size, (2, 8))
    model.eval(), checkpoint.model.eval()
    assert torch.equal(model(idx)[0], checkpoint.model(idx)[0])
    assert checkpoint.model.lm_head.weight is checkpoint.model.wte.weight  # still tied
    assert checkpoint.step == 5 and checkpoint.metrics == {"val_loss": 1.5}
    assert checkpoint.tokenizer.itos == TOKENIZER.itos and checkpoint.config == CONFIG


def test_layout_is_safetensors_and_json(tmp_path: Path) -> None:
    saved_run(tmp_path / "run")
    folder = tmp_path / "run" / "checkpoints" / "step-00000005"
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "model.safetensors"]
    tensors = safetensors.torch.load_file(folder / "model.safetensors")
    assert "blocks.1.attn.c_attn.weight" in tensors
    assert tensors["blocks.0.mlp.c_fc.weight"].shape == (64, 16)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["format"] == 1 and meta["step"] == 5 and meta["tokenizer"]["type"] == "char"


def test_newest_complete_checkpoint_wins(tmp_path: Path) -> None:
    saved_run(tmp_path / "run", steps=(10, 200, 30))
    (tmp_path / "run" / "checkpoints" / ".tmp-half-written").mkdir()
    assert find_checkpoint(tmp_path / "run").name == "step-00000200"


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such run directory"):
        load_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a tinygpt run directory"):
        load_checkpoint(tmp_path / "empty")


def test_tensors_that_do_not_match_the_config_are_refused(tmp_path: Path) -> None:
    saved_run(tmp_path / "run")
    folder = find_checkpoint(tmp_path / "run")
    tensors = safetensors.torch.load_file(folder / "model.safetensors")
    tensors["blocks.0.mlp.c_fc.weight"] = torch.zeros(3, 3)
    safetensors.torch.save_file(tensors, folder / "model.safetensors")
    with pytest.raises(UserError, match="does not match its config"):
        load_checkpoint(folder)
    (folder / "meta.json").write_text("{broken")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_checkpoint(folder)
