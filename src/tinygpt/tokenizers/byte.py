"""Bytes as tokens: the 256 values of a byte, so no text is ever outside the vocabulary, and
a file that is not text at all trains too (its invalid bytes reach the tokenizer escaped).

A character takes one to four tokens (its UTF-8 bytes): a model reads Chinese or emoji as
easily as English, at the price of longer sequences than a character vocabulary gives.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from tinygpt.tokenizers import Tokenizer, TrainOptions, register


@register("byte")
class ByteTokenizer(Tokenizer):
    """Token id = byte value, 0..255."""

    trained_on = "nothing"
    reads_any_bytes = True  # a byte-level model reads any file, text or not

    @classmethod
    def train(cls, texts: Iterable[str], options: TrainOptions) -> ByteTokenizer:
        return cls()

    @property
    def vocab_size(self) -> int:
        return 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8", errors="surrogateescape"))

    def encode_batch(self, texts: Sequence[str]) -> np.ndarray:
        data = "".join(texts).encode("utf-8", errors="surrogateescape")
        return np.frombuffer(data, dtype=np.uint8).astype(np.int64)

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return bytes(ids)

    def to_huggingface(self) -> Any:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers

        from tinygpt.tokenizers.bpe import byte_to_symbol

        # byte-level BPE with no merges: every byte a token, id = its value
        vocab = {symbol: b for b, symbol in byte_to_symbol().items()}
        hf = HFTokenizer(models.BPE(vocab, merges=[]))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        hf.decoder = decoders.ByteLevel()
        return hf

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ByteTokenizer:
        return cls()
