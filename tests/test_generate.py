"""Generation: greedy decoding, seeds, and the checks on its settings."""

from __future__ import annotations

import pytest
import torch

from tinygpt.errors import UserError
from tinygpt.generate import generate, stream_text
from tinygpt.models.bigram import BigramLanguageModel
from tinygpt.tokenizer import CharTokenizer

TOKENIZER = CharTokenizer.from_text("\nabcdefghijklmnopqrstuvwxyz ")


def model() -> BigramLanguageModel:
    torch.manual_seed(0)
    return BigramLanguageModel(TOKENIZER.vocab_size)


def test_temperature_zero_is_argmax() -> None:
    m = model()
    idx = torch.tensor([[3]])
    tokens = [int(t) for t in generate(m, idx, 10, block_size=8, temperature=0)]
    expected, last = [], 3
    for _ in range(10):
        last = int(m.token_embedding_table.weight[last].argmax())
        expected.append(last)
    assert tokens == expected


def test_same_seed_same_text_other_seed_other_text() -> None:
    m = model()
    a = "".join(stream_text(m, TOKENIZER, "ab", 80, 8, seed=1))
    b = "".join(stream_text(m, TOKENIZER, "ab", 80, 8, seed=1))
    c = "".join(stream_text(m, TOKENIZER, "ab", 80, 8, seed=2))
    assert a == b and a != c and len(a) == 80


def test_empty_prompt_starts_from_token_zero() -> None:
    m = model()
    greedy = "".join(stream_text(m, TOKENIZER, "", 5, 8, temperature=0))
    assert greedy == "".join(stream_text(m, TOKENIZER, TOKENIZER.itos[0], 5, 8, temperature=0))


@pytest.mark.parametrize(
    ("prompt", "max_new_tokens", "temperature", "message"),
    [
        ("abc!", 5, 1.0, r"'!' \(U\+0021\) at position 3"),
        ("ab", 0, 1.0, "max new tokens must be at least 1"),
        ("ab", 5, -0.5, "temperature must be 0"),
        ("ab", 5, float("nan"), "temperature must be 0"),
    ],
)
def test_bad_settings_fail_before_any_token(prompt, max_new_tokens, temperature, message) -> None:
    with pytest.raises(UserError, match=message):
        stream_text(model(), TOKENIZER, prompt, max_new_tokens, 8, temperature)
