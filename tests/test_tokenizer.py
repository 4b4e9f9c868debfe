"""The char tokenizer: the lecture's numbers, round trips, errors, any Unicode."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinygpt.errors import UserError
from tinygpt.tokenizers import CharTokenizer, load_tokenizer, save_tokenizer


@pytest.fixture(scope="module")
def shakespeare_tokenizer(shakespeare_path: Path) -> CharTokenizer:
    return CharTokenizer.from_text(shakespeare_path.read_text(encoding="utf-8"))


def test_shakespeare_vocabulary_and_lecture_example(shakespeare_tokenizer: CharTokenizer) -> None:
    tok = shakespeare_tokenizer
    assert tok.vocab_size == 65
    assert "".join(tok.itos[:13]) == "\n !$&',-.3:;?"
    ids = tok.encode("Hello NanoGPT")
    assert ids == [20, 43, 50, 50, 53, 1, 26, 39, 52, 53, 19, 28, 32]
    assert tok.decode(ids) == "Hello NanoGPT"
    assert tok.encode("hii there") == [46, 47, 47, 1, 58, 46, 43, 56, 43]


def test_unknown_character_is_named_with_its_position(shakespeare_tokenizer: CharTokenizer) -> None:
    with pytest.raises(UserError, match=r"'é' \(U\+00E9\) at position 3"):
        shakespeare_tokenizer.encode("Ham\u00e9let")
    with pytest.raises(UserError, match="position 2"):
        shakespeare_tokenizer.encode_array("ab\u4e2dc")


def test_json_round_trip(shakespeare_tokenizer: CharTokenizer, tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    save_tokenizer(shakespeare_tokenizer, path)
    loaded = load_tokenizer(path)
    assert loaded.itos == shakespeare_tokenizer.itos
    assert loaded.encode("To be, or not") == shakespeare_tokenizer.encode("To be, or not")


def test_corrupt_tokenizer_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text("{not json")
    with pytest.raises(UserError, match="cannot read tokenizer"):
        load_tokenizer(path)
    path.write_text('{"type": "char", "chars": "ba"}')
    with pytest.raises(UserError, match="invalid tokenizer"):
        load_tokenizer(path)


@given(st.text(min_size=1))
def test_any_unicode_text_round_trips(text: str) -> None:
    tok = CharTokenizer.from_text(text)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.encode_array(text).tolist() == ids
    assert tok.vocab_size == len(set(text))


def test_chinese_corpus_with_thousands_of_characters() -> None:
    rng = random.Random(0)
    alphabet = [chr(c) for c in range(0x4E00, 0x4E00 + 6000)]
    text = "".join(rng.choice(alphabet) for _ in range(200_000)) + "，。\n"
    tok = CharTokenizer.from_text(text)
    assert tok.vocab_size > 5000
    ids = tok.encode_array(text)
    assert ids.max() == tok.vocab_size - 1
    assert tok.decode(ids.tolist()) == text


def test_ids_follow_code_point_order() -> None:
    tok = CharTokenizer.from_text("ba\u00e9\U0001f600a")
    assert tok.itos == ["a", "b", "\u00e9", "\U0001f600"]
    assert np.array_equal(tok.encode_array("\U0001f600ab"), [3, 0, 1])
