"""GPT-2's vocabulary (50,257 tokens) through `tiktoken`, from a ranks file on this machine.

Nothing is downloaded: the user gives the ranks file once (`--data.tokenizer_file
gpt2.tiktoken`, the file tiktoken's `gpt2` encoding reads, sha256-checked), tinygpt keeps a
copy in its cache, and every later load (a checkpoint, `tinygpt sample`) finds it there.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tinygpt.errors import UserError
from tinygpt.files import cache_home, temp_file
from tinygpt.tokenizers import END_OF_TEXT, Tokenizer, TrainOptions, register

RANKS_FILE = "gpt2.tiktoken"
RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
EOT_ID = 50256
# GPT-2's rule for cutting text into words before merging (tiktoken's r50k_base)
SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def cached_ranks_path() -> Path:
    return cache_home() / "tokenizers" / RANKS_FILE


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def install_ranks(path: Path) -> Path:
    """Check a user's ranks file and keep a copy in the cache (once); the cached path."""
    dest = cached_ranks_path()
    if dest.exists() and _sha256(dest) == RANKS_SHA256:
        return dest
    if not path.is_file():
        raise UserError(f"no such file: {path} (data.tokenizer_file, GPT-2's {RANKS_FILE})")
    actual = _sha256(path)
    if actual != RANKS_SHA256:
        raise UserError(
            f"{path} is not GPT-2's {RANKS_FILE}: sha256 {actual}, expected {RANKS_SHA256}"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_file(dest.parent, ".incoming-")
    try:
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def find_ranks() -> Path:
    dest = cached_ranks_path()
    if not dest.exists():
        raise UserError(
            f"the gpt2 tokenizer needs GPT-2's ranks file {RANKS_FILE} (sha256 "
            f"{RANKS_SHA256[:12]}...): pass it once with --data.tokenizer_file PATH, or put "
            f"it at {dest}"
        )
    return dest


def read_ranks(path: Path) -> dict[bytes, int]:
    """tiktoken's ranks format: one `base64(token bytes) rank` per line."""
    ranks = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


@register("gpt2")
class Gpt2Tokenizer(Tokenizer):
    """tiktoken's `gpt2` encoding, built from the local ranks file."""

    trained_on = "nothing"

    def __init__(self, ranks_path: Path) -> None:
        import tiktoken

        self.ranks = read_ranks(ranks_path)
        self.encoding = tiktoken.Encoding(
            name="gpt2",
            pat_str=SPLIT_PATTERN,
            mergeable_ranks=self.ranks,
            special_tokens={END_OF_TEXT: EOT_ID},
        )

    @classmethod
    def train(cls, texts: Iterable[str], options: TrainOptions) -> Gpt2Tokenizer:
        return cls(install_ranks(Path(options.file)) if options.file else find_ranks())

    @property
    def vocab_size(self) -> int:
        return self.encoding.n_vocab

    @property
    def eot_id(self) -> int:
        return EOT_ID

    def encode(self, text: str) -> list[int]:
        # the corpus' own text: "<|endoftext|>" written in it is text, not the separator
        return self.encoding.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str]) -> np.ndarray:
        threads = os.cpu_count() or 1
        batches = self.encoding.encode_ordinary_batch(list(texts), num_threads=threads)
        arrays = [np.array(ids, dtype=np.int64) for ids in batches]
        return np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return self.encoding.decode_bytes(list(ids))

    def to_huggingface(self) -> Any:
        """GPT-2's tokenizer as `transformers` ships it: byte-level BPE, vocabulary and
        merges (which the ranks imply), `<|endoftext|>` = 50256."""
        from tokenizers import AddedToken, decoders, models, pre_tokenizers
        from tokenizers import Tokenizer as HFTokenizer

        from tinygpt.tokenizers.bpe import byte_to_symbol

        symbols = byte_to_symbol()

        def word(token: bytes) -> str:
            return "".join(symbols[b] for b in token)

        vocab = {word(token): rank for token, rank in self.ranks.items()}
        merges = [(word(left), word(right)) for left, right in merges_of(self.ranks)]
        hf = HFTokenizer(models.BPE(vocab, merges))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's pattern
        hf.decoder = decoders.ByteLevel()
        hf.add_special_tokens([AddedToken(END_OF_TEXT, special=True, normalized=False)])
        return hf

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "ranks_sha256": RANKS_SHA256}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Gpt2Tokenizer:
        if values.get("ranks_sha256") != RANKS_SHA256:
            raise ValueError("a gpt2 tokenizer's JSON names GPT-2's ranks file by its sha256")
        return cls(find_ranks())


def merges_of(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge list that rank-ordered BPE implies: a token of rank r is the pair that
    merging its bytes with the tokens ranked below r leaves (merge-list BPE, as
    `tokenizers` runs it, then gives the same ids as tiktoken)."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) > 1:
            left, right = _merge_below(token, rank, ranks)
            merges.append((left, right))
    return merges


def _merge_below(token: bytes, rank: int, ranks: dict[bytes, int]) -> list[bytes]:
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        pairs = [(ranks.get(a + b, rank), i) for i, (a, b) in enumerate(itertools.pairwise(parts))]
        best, i = min(pairs)
        if best >= rank:
            break
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2:
        raise ValueError(f"token {token!r} is not one merge of two lower-ranked tokens")
    return parts
