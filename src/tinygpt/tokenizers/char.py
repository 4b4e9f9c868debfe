"""The lecture's tokenizer: one token per character, the vocabulary the sorted set of the
corpus' characters (`stoi` / `itos`, as in the notebook)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from tinygpt.errors import UserError, note
from tinygpt.tokenizers import Tokenizer, TrainOptions, register

# the parts of emoji sequences, which a char tokenizer separates
EMOJI_PARTS = re.compile(
    "[\u200d\ufe0e\ufe0f\u20e3"  # joiner, text / emoji presentation, keycap
    "\U0001f3fb-\U0001f3ff"  # skin tones
    "\U0001f1e6-\U0001f1ff"  # the regional indicators that make flags
    "\U000e0020-\U000e007f]"  # tags (subdivision flags)
)


@register("char")
class CharTokenizer(Tokenizer):
    """One token per character; ids follow the characters' code point order."""

    trained_on = "corpus"  # a character of val outside the vocabulary could not be encoded

    def __init__(self, chars: Sequence[str]) -> None:
        if list(chars) != sorted(set(chars)) or any(len(c) != 1 for c in chars):
            raise ValueError("a char vocabulary is a sorted list of distinct characters")
        self.itos = list(chars)
        self.stoi = {ch: i for i, ch in enumerate(self.itos)}
        self.code_points = np.frombuffer("".join(self.itos).encode("utf-32-le"), dtype=np.uint32)

    @classmethod
    def train(cls, texts: Iterable[str], options: TrainOptions) -> CharTokenizer:
        chars: set[str] = set()
        for text in texts:
            chars.update(text)
        if EMOJI_PARTS.search("".join(chars)):
            note(
                "the text has emoji made of several code points (joiners, skin tones, flags); "
                "the char tokenizer splits them, so samples may show their parts apart"
            )
        return cls(sorted(chars))

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def tokens(self) -> list[str]:
        return list(self.itos)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[ch] for ch in text]
        except KeyError:
            raise self._unknown_character(text) from None

    def encode_batch(self, texts: Sequence[str]) -> np.ndarray:
        arrays = [self._encode_vectorised(text) for text in texts]
        return np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)

    def _encode_vectorised(self, text: str) -> np.ndarray:
        """A whole corpus at once (the same ids as `encode`)."""
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        vocab = self.code_points
        ids = np.searchsorted(vocab, codes)
        known = vocab[np.minimum(ids, len(vocab) - 1)] == codes
        if not known.all():
            raise self._unknown_character(text)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.itos[i] for i in ids)

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return self.decode(ids).encode("utf-8")

    def _unknown_character(self, text: str) -> UserError:
        position, ch = next((i, c) for i, c in enumerate(text) if c not in self.stoi)
        return UserError(
            f"character {ch!r} (U+{ord(ch):04X}) at position {position} is not in the "
            f"vocabulary of {self.vocab_size} characters"
        )

    def to_huggingface(self) -> Any:
        from tokenizers import Regex, decoders, models, pre_tokenizers
        from tokenizers import Tokenizer as HFTokenizer

        hf = HFTokenizer(models.WordLevel(self.stoi, unk_token=None))
        # every character a word of its own; "." would not match a newline
        hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        hf.decoder = decoders.Fuse()  # the characters side by side, no spaces between
        return hf

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "chars": "".join(self.itos)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CharTokenizer:
        if not isinstance(values.get("chars"), str):
            raise ValueError("a char tokenizer's JSON needs its characters as a string")
        return cls(list(values["chars"]))
