"""A corpus encoded into `train.bin` and `val.bin`: token ids, written as they are made.

The text is read and encoded a batch of pieces at a time (the tokenizer may use every core
for a batch) and appended to one file; when the total is known, its last `val_fraction` of
tokens is moved to `val.bin`. Memory stays bounded by the batch, whatever the corpus' size.
With the tokens goes what bits per byte needs: how many bytes of text each split holds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tinygpt.data.sources import DocumentEnd, Piece, Source, TextReader
from tinygpt.errors import UserError, note
from tinygpt.tokenizers import Tokenizer

PREPARE_FORMAT = 3  # bump when the prepared files change meaning (3: folders, bytes per split)
DOCUMENT_SEPARATOR = "\n\n"  # between documents, for the kinds without an end-of-text token
BATCH_PIECES = 64  # pieces encoded together (on every core), about 4 MB of text
COPY_TOKENS = 1 << 22
SHOW_PROGRESS_FROM_BYTES = 16 << 20


def split_point(n_tokens: int, val_fraction: float) -> int:
    """The notebook's split: the first (1 - val_fraction) of the tokens train, the rest val."""
    return int((1 - val_fraction) * n_tokens)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 65_535 else np.uint32)


@dataclass
class TokenFiles:
    """What was written: tokens and bytes of text per split, and the corpus' characters."""

    dtype: np.dtype
    tokens: dict[str, int]
    text_bytes: dict[str, int]
    characters: int
    documents: int

    @classmethod
    def write(
        cls, source: Source, tokenizer: Tokenizer, folder: Path, val_fraction: float
    ) -> TokenFiles:
        dtype = token_dtype(tokenizer.vocab_size)
        reader = TextReader(source, any_bytes=tokenizer.reads_any_bytes)
        byte_lengths = tokenizer.token_byte_lengths()
        total_tokens = total_bytes = 0
        train_path, val_path = folder / "train.bin", folder / "val.bin"
        with _progress(source, tokenizer) as bar, train_path.open("wb") as out:
            start = time.perf_counter()
            for ids in _encoded(reader.pieces(), tokenizer):
                ids.astype(dtype).tofile(out)
                total_tokens += len(ids)
                total_bytes += int(byte_lengths[ids].sum())
                bar.update(reader.bytes_read - bar.n)
                bar.set_postfix_str(f"{total_tokens / (time.perf_counter() - start):,.0f} tok/s")
        _check_text(source, reader, total_tokens)
        if reader.saw_crlf:
            note(f"{source.root} has Windows line endings (CRLF); they are read as \\n")
        n_train = split_point(total_tokens, val_fraction)
        _move_tail(train_path, val_path, n_train, dtype)
        val_bytes = _text_bytes(val_path, dtype, byte_lengths)
        return cls(
            dtype=dtype,
            tokens={"train": n_train, "val": total_tokens - n_train},
            text_bytes={"train": total_bytes - val_bytes, "val": val_bytes},
            characters=reader.characters,
            documents=len(source.files),
        )

    def meta(self) -> dict:
        return {
            "format": PREPARE_FORMAT,
            "dtype": self.dtype.name,
            "characters": self.characters,
            "documents": self.documents,
            "splits": {
                split: {"tokens": self.tokens[split], "bytes": self.text_bytes[split]}
                for split in ("train", "val")
            },
        }


def _encoded(pieces: Iterator[Piece], tokenizer: Tokenizer) -> Iterator[np.ndarray]:
    """Token ids of the text, a batch of pieces at a time; documents apart by the
    end-of-text token, or by a blank line where the tokenizer has none."""
    batch: list[str] = []
    for piece in pieces:
        if isinstance(piece, DocumentEnd):
            if batch:
                yield tokenizer.encode_batch(batch)
                batch = []
            yield _separator(tokenizer)
        else:
            batch.append(piece)
            if len(batch) == BATCH_PIECES:
                yield tokenizer.encode_batch(batch)
                batch = []
    if batch:
        yield tokenizer.encode_batch(batch)


def _separator(tokenizer: Tokenizer) -> np.ndarray:
    if tokenizer.eot_id is not None:
        return np.array([tokenizer.eot_id])
    return tokenizer.encode_array(DOCUMENT_SEPARATOR)


def _progress(source: Source, tokenizer: Tokenizer) -> tqdm:
    return tqdm(
        total=source.nbytes,
        unit="B",
        unit_scale=True,
        desc=f"preparing {source.name} ({tokenizer.kind})",
        disable=source.nbytes < SHOW_PROGRESS_FROM_BYTES,
    )


def _check_text(source: Source, reader: TextReader, total_tokens: int) -> None:
    if total_tokens == 0:
        raise UserError(f"corpus {source.root} is empty")
    if len(reader.distinct) < 2:
        raise UserError(
            f"corpus {source.root} has a vocabulary of {len(reader.distinct)} character "
            f"({''.join(reader.distinct)!r}); there is nothing to learn, use a real text"
        )


def _move_tail(train_path: Path, val_path: Path, n_train: int, dtype: np.dtype) -> None:
    """Tokens from `n_train` on leave train.bin for val.bin, a block at a time."""
    with train_path.open("r+b") as train, val_path.open("wb") as val:
        train.seek(n_train * dtype.itemsize)
        while block := train.read(COPY_TOKENS * dtype.itemsize):
            val.write(block)
        train.truncate(n_train * dtype.itemsize)


def _text_bytes(path: Path, dtype: np.dtype, byte_lengths: np.ndarray) -> int:
    """Bytes of text that the tokens of a file stand for, read a block at a time (a memory
    map would keep every page it touched resident until the end)."""
    total = 0
    with path.open("rb") as f:
        while len(ids := np.fromfile(f, dtype=dtype, count=COPY_TOKENS)):
            total += int(byte_lengths[ids].sum())
    return total
