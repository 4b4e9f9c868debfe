"""Tokenizers: text <-> token ids, one interface for every kind, saved as JSON.

A kind is a class with the `Tokenizer` interface, registered under a name (`@register("char")`).
The rest of tinygpt knows only the interface: data.py trains a tokenizer of the configured
kind on a corpus (`build_tokenizer`), checkpoints store its `to_dict()`, and
`tokenizer_from_dict` rebuilds it from the `type` saved there. Adding a kind is a module here
that registers itself; nothing else changes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tinygpt.errors import UserError


class Tokenizer(Protocol):
    """What the rest of tinygpt needs of a tokenizer."""

    kind: str  # the name it is registered under, saved as "type" in its JSON

    @classmethod
    def from_text(cls, text: str) -> Tokenizer:
        """A tokenizer of this kind built (trained) on a corpus."""
        ...

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Tokenizer:
        """Rebuild one saved with `to_dict` (raises ValueError if the values are not valid)."""
        ...

    @property
    def vocab_size(self) -> int: ...

    def tokens(self) -> list[str]:
        """The text of every token id, in id order (what `tinygpt inspect` lists)."""
        ...

    def encode(self, text: str) -> list[int]: ...

    def encode_array(self, text: str) -> np.ndarray:
        """A whole corpus at once: the same ids as `encode`, as an integer array."""
        ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


KINDS: dict[str, type[Tokenizer]] = {}


def register(kind: str) -> Callable[[type[Tokenizer]], type[Tokenizer]]:
    """Class decorator: make a tokenizer class available under `kind`."""

    def add(cls: type[Tokenizer]) -> type[Tokenizer]:
        cls.kind = kind
        KINDS[kind] = cls
        return cls

    return add


def tokenizer_kind(kind: str) -> type[Tokenizer]:
    if kind not in KINDS:
        raise UserError(f"unknown tokenizer {kind!r} (known: {', '.join(KINDS)})")
    return KINDS[kind]


def build_tokenizer(kind: str, text: str) -> Tokenizer:
    """A tokenizer of the registered `kind`, built on the corpus `text`."""
    return tokenizer_kind(kind).from_text(text)


def tokenizer_from_dict(values: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer saved with `to_dict`, whatever its kind."""
    kind = values.get("type")
    if not isinstance(kind, str) or kind not in KINDS:
        raise UserError(f"unsupported tokenizer description: type {kind!r}")
    try:
        return KINDS[kind].from_dict(values)
    except (ValueError, TypeError, KeyError) as exc:
        raise UserError(f"invalid tokenizer: {exc}") from None


def save_tokenizer(tokenizer: Tokenizer, path: Path) -> None:
    path.write_text(json.dumps(tokenizer.to_dict(), ensure_ascii=False), encoding="utf-8")


def load_tokenizer(path: Path) -> Tokenizer:
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read tokenizer {path}: {exc}") from None
    if not isinstance(values, dict):
        raise UserError(f"cannot read tokenizer {path}: not a JSON object")
    return tokenizer_from_dict(values)


# the kinds that ship with tinygpt register themselves on import
from tinygpt.tokenizers.char import CharTokenizer  # noqa: E402

__all__ = [
    "KINDS",
    "CharTokenizer",
    "Tokenizer",
    "build_tokenizer",
    "load_tokenizer",
    "register",
    "save_tokenizer",
    "tokenizer_from_dict",
    "tokenizer_kind",
]
