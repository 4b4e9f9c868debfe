"""Byte-level BPE trained on the corpus, with Hugging Face `tokenizers` (GPT-2's scheme).

The text is cut into words by GPT-2's pattern, each word is read as UTF-8 bytes, and the
most frequent adjacent pairs are merged until the vocabulary has `vocab_size` tokens: the
256 bytes, `<|endoftext|>` (id 0, between documents) and the merges. Any text can be
encoded (the bytes are all there) and the tokenizer is saved as `tokenizers`' own JSON.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from functools import cached_property
from typing import Any

import numpy as np

from tinygpt.errors import UserError
from tinygpt.tokenizers import END_OF_TEXT, Tokenizer, TrainOptions, register

SMALLEST_VOCAB = 256 + 1 + 1  # the bytes, end-of-text and at least one merge
SHOW_PROGRESS_FROM_BYTES = 16 << 20


def default_vocab_size(corpus_bytes: int) -> int:
    """The power of two nearest half the square root of the corpus size, from 512 to
    32,768: 512 for tiny shakespeare, 16,384 for a GB. A larger vocabulary shortens the
    sequences but gives each token fewer examples to learn from (on tiny shakespeare, 512
    tokens beat 1,024 at three CPU minutes: benchmarks/RESULTS.md, "Tokenizers").

    Prepared data is cached by the configured size (0 for this default): a change here must
    bump token_files.PREPARE_FORMAT."""
    if corpus_bytes <= 0:
        return 512
    exponent = round(math.log2(math.sqrt(corpus_bytes) / 2))
    return int(min(max(2**exponent, 512), 32768))


def byte_to_symbol() -> dict[int, str]:
    """GPT-2's printable stand-in for every byte: printable Latin-1 bytes stand for
    themselves, the others for the characters from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    symbols = {b: chr(b) for b in printable}
    others = (b for b in range(256) if b not in symbols)
    symbols.update({b: chr(256 + n) for n, b in enumerate(others)})
    return symbols


@register("bpe")
class BpeTokenizer(Tokenizer):
    """A trained `tokenizers.Tokenizer` (byte-level BPE) behind tinygpt's interface."""

    trained_on = "train split"  # val stays unseen, as it is by the model

    def __init__(self, hf: Any) -> None:
        self.hf = hf
        eot = hf.token_to_id(END_OF_TEXT)
        if eot is None:
            raise ValueError(f"a bpe tokenizer needs the {END_OF_TEXT} token")
        self._eot_id = int(eot)

    @classmethod
    def train(cls, texts: Iterable[str], options: TrainOptions) -> BpeTokenizer:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        vocab_size = options.vocab_size or default_vocab_size(options.corpus_bytes)
        if vocab_size < SMALLEST_VOCAB:
            raise UserError(
                f"data.vocab_size {vocab_size} is too small for bpe: it needs the 256 bytes, "
                f"{END_OF_TEXT} and some merges (at least {SMALLEST_VOCAB})"
            )
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=2,  # a pair seen once is not a pattern
            special_tokens=[END_OF_TEXT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=options.corpus_bytes >= SHOW_PROGRESS_FROM_BYTES,
        )
        hf.train_from_iterator(texts, trainer)
        return cls(hf)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    @property
    def eot_id(self) -> int:
        return self._eot_id

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> np.ndarray:
        encodings = self.hf.encode_batch_fast(list(texts), add_special_tokens=False)
        arrays = [np.array(e.ids, dtype=np.int64) for e in encodings]
        return np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)

    @cached_property
    def _token_bytes(self) -> list[bytes]:
        """The bytes of every token id."""
        symbol_to_byte = {s: b for b, s in byte_to_symbol().items()}
        special = {t.content for t in self.hf.get_added_tokens_decoder().values()}
        table = []
        for i in range(self.vocab_size):
            token = self.hf.id_to_token(i)
            if token in special:
                table.append(token.encode("utf-8"))
            else:
                table.append(bytes(symbol_to_byte[s] for s in token))
        return table

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        table = self._token_bytes
        return b"".join(table[i] for i in ids)

    def to_huggingface(self) -> Any:
        return type(self.hf).from_str(self.hf.to_str())  # a copy: it is one already

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "tokenizer": json.loads(self.hf.to_str())}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BpeTokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        if not isinstance(values.get("tokenizer"), dict):
            raise ValueError("a bpe tokenizer's JSON needs its `tokenizers` description")
        try:
            hf = HFTokenizer.from_str(json.dumps(values["tokenizer"]))
        except Exception as exc:  # tokenizers raises its own Exception type
            raise ValueError(f"not a `tokenizers` description ({exc})") from None
        return cls(hf)
