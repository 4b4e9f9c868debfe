"""Tokenizers: text <-> token ids, one interface for every kind, saved as JSON.

A kind is a class with the `Tokenizer` interface, registered under a name (`@register("char")`).
The rest of tinygpt knows only the interface: data preparation trains a tokenizer of the
configured kind on a corpus (`tokenizer_kind(kind).train`), checkpoints store its `to_dict()`, and
`tokenizer_from_dict` rebuilds it from the `type` saved there. Adding a kind is a module here
that registers itself; nothing else changes.

Every token is a sequence of bytes (`decode_bytes`): a byte-level token may hold part of a
character, so text is decoded from the bytes of several tokens at once, and a stream of tokens
through `TextDecoder`, which holds back a character until its last byte has come.
"""

from __future__ import annotations

import codecs
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from tinygpt.errors import UserError, unknown_name

END_OF_TEXT = "<|endoftext|>"  # the document separator of the kinds that have one

# what a kind learns its vocabulary from: every character of the corpus (char), the train
# split (bpe), or nothing (byte, gpt2: fixed vocabularies)
TrainedOn = Literal["corpus", "train split", "nothing"]


@dataclass(frozen=True)
class TrainOptions:
    """What a kind may need to build its vocabulary (each reads the fields it knows)."""

    vocab_size: int = 0  # bpe: the vocabulary size (0: chosen from the corpus size)
    file: str = ""  # gpt2: the ranks file
    corpus_bytes: int = 0  # the size of the text it is trained on, for defaults and progress


class Tokenizer(ABC):
    """What the rest of tinygpt needs of a tokenizer: a kind implements the abstract
    methods and gets the rest from them."""

    kind: ClassVar[str]  # the name it is registered under, saved as "type" in its JSON
    trained_on: ClassVar[TrainedOn]
    # whether it reads any bytes, not only UTF-8 text: a corpus is then read with its invalid
    # bytes as surrogate escapes (U+DC80-U+DCFF), which its encode turns back into the bytes
    reads_any_bytes: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def train(cls, texts: Iterable[str], options: TrainOptions) -> Tokenizer:
        """A tokenizer of this kind built on the pieces of a text (what `trained_on` says)."""

    @classmethod
    @abstractmethod
    def from_dict(cls, values: dict[str, Any]) -> Tokenizer:
        """Rebuild one saved with `to_dict` (raises ValueError if the values are not valid)."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]: ...

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @property
    def eot_id(self) -> int | None:
        """The end-of-text token that separates documents, if the kind has one."""
        return None

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Several pieces of one text at once (kinds that can use every core here): the ids
        of each piece in turn, as one integer array."""
        return np.array([i for text in texts for i in self.encode(text)], dtype=np.int64)

    @abstractmethod
    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """The UTF-8 bytes that the tokens stand for (a special token: its name)."""

    def to_huggingface(self) -> Any:
        """The same tokenizer as a Hugging Face `tokenizers.Tokenizer` (same ids, same text),
        which `transformers` loads as a fast tokenizer: what an exported model carries. The
        kinds that ship with tinygpt all have one; another kind may not."""
        raise UserError(f"the {self.kind} tokenizer has no Hugging Face form to export")

    @classmethod
    def from_text(cls, text: str, options: TrainOptions | None = None) -> Tokenizer:
        """A tokenizer trained on one text held in memory."""
        return cls.train([text], options or TrainOptions(corpus_bytes=len(text.encode())))

    def encode_array(self, text: str) -> np.ndarray:
        return self.encode_batch([text])

    def decode(self, ids: Sequence[int]) -> str:
        """Text of a whole sequence of tokens; bytes that are not UTF-8 show escaped (\\xNN),
        as TextDecoder shows them streamed."""
        return self.decode_bytes(ids).decode("utf-8", errors="backslashreplace")

    def token_text(self, token: int) -> str:
        """One token, readable: a byte that is part of a character shows as \\xNN."""
        return self.decode_bytes([token]).decode("utf-8", errors="backslashreplace")

    def tokens(self) -> list[str]:
        """The text of every token id, in id order (what `tinygpt inspect` lists)."""
        return [self.token_text(i) for i in range(self.vocab_size)]

    def token_byte_lengths(self) -> np.ndarray:
        """(vocab_size,) bytes of corpus text each token stands for; the end-of-text token
        stands for none (it separates documents, it is not their text)."""
        sizes = np.array([len(self.decode_bytes([i])) for i in range(self.vocab_size)])
        if self.eot_id is not None:
            sizes[self.eot_id] = 0
        return sizes.astype(np.int64)


class TextDecoder:
    """Text from a stream of tokens, a piece per token: bytes that end in the middle of a
    character wait for the rest of it, so valid output never shows U+FFFD; bytes that are not
    UTF-8 at all (a byte model of a binary file) show escaped, as `\\xe4`."""

    def __init__(self, tokenizer: Tokenizer, raw: bool = False) -> None:
        self.tokenizer = tokenizer
        # raw: bytes that are not UTF-8 as surrogate escapes, which encode back into them
        errors = "surrogateescape" if raw else "backslashreplace"
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors=errors)

    def feed(self, token: int) -> str:
        return self.utf8.decode(self.tokenizer.decode_bytes([token]))

    def flush(self) -> str:
        """What is left at the end of the stream (an incomplete character shows escaped)."""
        return self.utf8.decode(b"", final=True)


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
        raise UserError(unknown_name("tokenizer", kind, KINDS))
    return KINDS[kind]


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
from tinygpt.tokenizers.bpe import BpeTokenizer  # noqa: E402
from tinygpt.tokenizers.byte import ByteTokenizer  # noqa: E402
from tinygpt.tokenizers.char import CharTokenizer  # noqa: E402
from tinygpt.tokenizers.gpt2 import Gpt2Tokenizer  # noqa: E402

__all__ = [
    "END_OF_TEXT",
    "KINDS",
    "BpeTokenizer",
    "ByteTokenizer",
    "CharTokenizer",
    "Gpt2Tokenizer",
    "TextDecoder",
    "Tokenizer",
    "TrainOptions",
    "load_tokenizer",
    "register",
    "save_tokenizer",
    "tokenizer_from_dict",
    "tokenizer_kind",
]
