"""The seams other parts plug into: a tokenizer kind registered from outside, what a model
says it can do, its attention weights, and the KV cache's position."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from tinygpt.checkpoint import load_checkpoint
from tinygpt.config import ModelConfig, RunConfig, SampleConfig
from tinygpt.generate import Decoder, sample
from tinygpt.models import LanguageModel, build_model
from tinygpt.models.gpt import GPT, KVCache
from tinygpt.tokenizers import Tokenizer, TrainOptions, register
from tinygpt.training.runs import train


@register("reversed-char")
class ReversedCharTokenizer(Tokenizer):
    """A toy kind: one token per character, ids in reverse code point order."""

    trained_on = "corpus"

    def __init__(self, chars: Sequence[str]) -> None:
        self.chars = list(chars)
        self.ids = {ch: i for i, ch in enumerate(self.chars)}

    @classmethod
    def train(cls, texts: Iterable[str], options: TrainOptions) -> ReversedCharTokenizer:
        return cls(sorted(set("".join(texts)), reverse=True))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ReversedCharTokenizer:
        return cls(list(values["chars"]))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        return [self.ids[ch] for ch in text]

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return "".join(self.chars[i] for i in ids).encode()

    def to_dict(self) -> dict[str, Any]:
        return {"type": "reversed-char", "chars": "".join(self.chars)}


def test_a_tokenizer_registered_outside_trains_saves_and_samples(
    shakespeare, tmp_path: Path
) -> None:
    config = RunConfig.from_dict(
        {
            "data": {"tokenizer": "reversed-char"},
            "model": {"arch": "bigram", "block_size": 8},
            "optim": {"lr": 0.05},
            "train": {"steps": 200, "eval_interval": 100, "eval_batches": 2, "sample_tokens": 0},
        }
    )
    final = train(config, tmp_path / "run", out=io.StringIO())
    assert final["val_loss"] < 4.0  # from 4.7 at the start: it learned from these ids
    checkpoint = load_checkpoint(tmp_path / "run")
    assert isinstance(checkpoint.tokenizer, ReversedCharTokenizer)
    assert checkpoint.tokenizer.encode("a") < checkpoint.tokenizer.encode("Z")  # its own ids
    samples = sample(checkpoint, "ROMEO:", SampleConfig(max_new_tokens=50, seed=3))
    (text,) = samples.texts()
    assert text.startswith("ROMEO:") and len(text) == 56


def test_models_say_whether_they_can_decode_from_a_cache() -> None:
    gpt = build_model(ModelConfig(n_layer=1, n_head=2, n_embd=8, block_size=8), 10)
    bigram = build_model(ModelConfig(arch="bigram", block_size=8), 10)
    assert gpt.supports_kv_cache and not bigram.supports_kv_cache
    assert Decoder(gpt, 8).use_cache and not Decoder(bigram, 8).use_cache


@pytest.mark.parametrize(
    ("config", "kind"),
    [
        (ModelConfig(arch="bigram", block_size=8), "BigramLanguageModel"),
        (
            ModelConfig(arch="lecture", lecture_step="layernorm", n_head=2, n_embd=8, block_size=8),
            "LectureLanguageModel",
        ),
        (ModelConfig(n_layer=1, n_head=2, n_embd=8, block_size=8), "GPT"),
    ],
)
def test_every_model_is_a_language_model_whose_flags_match_what_it_can_do(
    config: ModelConfig, kind: str
) -> None:
    """What a flag says a model lacks raises; what it says a model has works."""
    model = build_model(config, 10)
    assert isinstance(model, LanguageModel) and type(model).__name__ == kind
    idx = torch.randint(10, (2, 6))
    logits, _ = model(idx)
    assert logits.shape == (2, 6, 10) and model.describe()
    abilities: dict[str, Callable[[], object]] = {
        "supports_kv_cache": lambda: model.new_cache(2),
        "supports_attention_maps": lambda: model.attention_weights(idx),
        "supports_block_crop": lambda: model.crop_block_size(4),
    }
    for flag, use in abilities.items():
        if getattr(model, flag):
            use()
        else:
            with pytest.raises(NotImplementedError):
                use()


def test_hidden_matrices_are_the_2d_weights_inside_the_blocks() -> None:
    model = build_model(ModelConfig(n_layer=2, n_head=2, n_embd=8, block_size=8), 10)
    names = {id(p): name for name, p in model.named_parameters()}
    hidden = {names[id(p)] for p in model.hidden_matrices()}
    assert hidden == {
        f"blocks.{i}.{m}.weight"
        for i in range(2)
        for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    }
    assert build_model(ModelConfig(arch="bigram"), 10).hidden_matrices() == []


def test_attention_weights_are_causal_distributions_the_model_really_uses() -> None:
    torch.manual_seed(0)
    config = ModelConfig(n_layer=2, n_head=4, n_embd=16, block_size=8, rotary=True, qk_norm=True)
    model = GPT(config, 10).eval()
    idx = torch.randint(10, (3, 6))
    weights = model.attention_weights(idx)
    assert weights.shape == (2, 3, 4, 6, 6)  # (n_layer, B, nh, T, T)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 4, 6))
    assert (weights.triu(diagonal=1) == 0).all()  # nothing from the future
    with torch.no_grad():
        plain, _ = model(idx)
        for block in model.blocks:  # the written-out attention, used for the whole pass
            block.attn.recorded = []
        recorded, _ = model(idx)
        for block in model.blocks:
            block.attn.recorded = None
    torch.testing.assert_close(recorded, plain, rtol=1e-5, atol=1e-5)


def test_the_kv_cache_owns_its_position() -> None:
    config = ModelConfig(n_layer=1, n_head=2, n_embd=8, block_size=8)
    model = GPT(config, 10).eval()
    cache = KVCache.empty(config, 1, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        model(torch.zeros(1, 5, dtype=torch.long), cache=cache)
        assert cache.pos == 5
        model(torch.zeros(1, 1, dtype=torch.long), cache=cache)
        assert cache.pos == 6
    cache.reset()
    assert cache.pos == 0
    cache.advance(3)
    assert cache.pos == 3
