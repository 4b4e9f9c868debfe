"""Tokenizers: text <-> token ids, saved as JSON.

`CharTokenizer` is the lecture's: the vocabulary is the sorted set of the corpus' characters.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tinygpt.errors import UserError


class Tokenizer(Protocol):
    """What the rest of tinygpt needs of a tokenizer."""

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


class CharTokenizer:
    """One token per character; ids follow the characters' code point order."""

    def __init__(self, chars: Sequence[str]) -> None:
        if list(chars) != sorted(set(chars)) or any(len(c) != 1 for c in chars):
            raise ValueError("a char vocabulary is a sorted list of distinct characters")
        self.itos = list(chars)
        self.stoi = {ch: i for i, ch in enumerate(self.itos)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[ch] for ch in text]
        except KeyError:
            raise self._unknown_character(text) from None

    def encode_array(self, text: str) -> np.ndarray:
        """Encode a whole corpus at once (vectorised; same ids as `encode`)."""
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        vocab = np.frombuffer("".join(self.itos).encode("utf-32-le"), dtype=np.uint32)
        ids = np.searchsorted(vocab, codes)
        known = vocab[np.minimum(ids, len(vocab) - 1)] == codes
        if not known.all():
            raise self._unknown_character(text)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.itos[i] for i in ids)

    def _unknown_character(self, text: str) -> UserError:
        position, ch = next((i, c) for i, c in enumerate(text) if c not in self.stoi)
        return UserError(
            f"character {ch!r} (U+{ord(ch):04X}) at position {position} is not in the "
            f"vocabulary of {self.vocab_size} characters"
        )

    def to_dict(self) -> dict[str, Any]:
        return {"type": "char", "chars": "".join(self.itos)}


def tokenizer_from_dict(values: dict[str, Any]) -> CharTokenizer:
    """Rebuild a tokenizer saved with `to_dict`."""
    if values.get("type") != "char" or not isinstance(values.get("chars"), str):
        raise UserError(f"unsupported tokenizer description: type {values.get('type')!r}")
    try:
        return CharTokenizer(list(values["chars"]))
    except ValueError as exc:
        raise UserError(f"invalid tokenizer: {exc}") from None


def save_tokenizer(tokenizer: Tokenizer, path: Path) -> None:
    path.write_text(json.dumps(tokenizer.to_dict(), ensure_ascii=False), encoding="utf-8")


def load_tokenizer(path: Path) -> CharTokenizer:
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read tokenizer {path}: {exc}") from None
    if not isinstance(values, dict):
        raise UserError(f"cannot read tokenizer {path}: not a JSON object")
    return tokenizer_from_dict(values)
