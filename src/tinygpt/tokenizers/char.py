"""The lecture's tokenizer: one token per character, the vocabulary the sorted set of the
corpus' characters (`stoi` / `itos`, as in the notebook)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from tinygpt.errors import UserError, note
from tinygpt.tokenizers import register

# the parts of emoji sequences, which a char tokenizer separates
EMOJI_PARTS = re.compile(
    "[\u200d\ufe0e\ufe0f\u20e3"  # joiner, text / emoji presentation, keycap
    "\U0001f3fb-\U0001f3ff"  # skin tones
    "\U0001f1e6-\U0001f1ff"  # the regional indicators that make flags
    "\U000e0020-\U000e007f]"  # tags (subdivision flags)
)


@register("char")
class CharTokenizer:
    """One token per character; ids follow the characters' code point order."""

    def __init__(self, chars: Sequence[str]) -> None:
        if list(chars) != sorted(set(chars)) or any(len(c) != 1 for c in chars):
            raise ValueError("a char vocabulary is a sorted list of distinct characters")
        self.itos = list(chars)
        self.stoi = {ch: i for i, ch in enumerate(self.itos)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        if EMOJI_PARTS.search(text):
            note(
                "the text has emoji made of several code points (joiners, skin tones, flags); "
                "the char tokenizer splits them, so samples may show their parts apart"
            )
        return cls(sorted(set(text)))

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
        return {"type": self.kind, "chars": "".join(self.itos)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CharTokenizer:
        if not isinstance(values.get("chars"), str):
            raise ValueError("a char tokenizer's JSON needs its characters as a string")
        return cls(list(values["chars"]))
