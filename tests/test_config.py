"""Config: presets, precedence, unknown keys, types and ranges, round trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinygpt.config import RunConfig, load_preset, preset_names, resolve
from tinygpt.errors import UserError


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_validates(name: str) -> None:
    config = resolve(preset=name)
    assert RunConfig.from_dict(config.to_dict()) == config
    assert load_preset(name)  # a preset sets something


def test_bigram_preset_has_the_notebook_settings() -> None:
    config = resolve(preset="bigram")
    assert config.model.arch == "bigram" and config.model.block_size == 8
    assert config.train.batch_size == 32 and config.train.steps == 10_000
    assert config.optim.lr == 1e-3 and config.train.seed == 1337


def test_precedence_defaults_preset_file_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text("[train]\nsteps = 50\nbatch_size = 7\n[optim]\nlr = 2\n")
    config = resolve("bigram", path, {"train": {"steps": 9}})
    assert config.train.steps == 9  # override beats file
    assert config.train.batch_size == 7  # file beats preset
    assert config.optim.lr == 2.0  # an int where a float is wanted is fine
    assert config.model.block_size == 8  # preset beats nothing
    assert config.train.eval_batches == 200


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"modle": {}}, "unknown config section 'modle'"),
        (
            {"model": {"n_layers": 4}},
            "unknown option 'model.n_layers'; did you mean model.n_layer?",
        ),
        ({"train": {"steps": "10"}}, "train.steps must be of type int"),
        ({"train": {"steps": True}}, "train.steps must be of type int"),
        ({"train": {"steps": 0}}, "train.steps must be at least 1"),
        ({"train": {"time_limit": -1.0}}, "train.time_limit must be 0 or positive"),
        ({"model": {"block_size": -1}}, "model.block_size must be at least 1"),
        ({"optim": {"lr": 0.0}}, "optim.lr must be positive"),
        ({"optim": {"lr": float("nan")}}, "finite number"),
        ({"optim": {"beta2": 1.0}}, r"optim.beta2 must be in \[0, 1\)"),
        ({"data": {"val_fraction": 1.0}}, "val_fraction must be between 0 and 1"),
        ({"data": {"tokenizer": "sentencepiece"}}, "unknown tokenizer 'sentencepiece'"),
        ({"data": {"vocab_size": -1}}, "vocab_size must not be negative"),
        ({"model": {"arch": "rnn"}}, "unknown model.arch 'rnn'"),
        ({"model": {"ngram": 4}}, r"model.ngram must be 0 \(none\), 2 or 3"),
        ({"model": {"smear": -1}}, "model.smear must not be negative"),
        ({"model": {"ngram_counts": -0.5}}, "model.ngram_counts must not be negative"),
        ({"train": {"device": "tpu"}}, "unknown train.device 'tpu'"),
        ({"train": 3}, "must be a table"),
    ],
)
def test_bad_values_are_rejected(values: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        RunConfig.from_dict(values)


def test_unknown_preset_and_bad_config_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown preset 'gpt5'"):
        resolve(preset="gpt5")
    with pytest.raises(UserError, match="config file not found"):
        resolve(config_file=tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[train\nsteps=")
    with pytest.raises(UserError, match="cannot read config file"):
        resolve(config_file=broken)
