"""Corpora: the registry of named corpora, download into a cache, and preparation into tokens.

A corpus is a registered name (downloaded once, checksum verified), a local UTF-8 text file
or a folder of them (sources.py). Preparation trains the tokenizer and encodes the corpus
once, streaming, into `train.bin` / `val.bin` (token ids, read back through numpy memmap;
token_files.py) and `tokenizer.json`, in a cache folder keyed by the corpus' content and the
data config, so an unchanged corpus is never prepared twice. It is all written in a temporary
folder renamed into place when complete: a killed or failed preparation leaves no cache
entry, partial or whole-looking.

The split is the notebook's: the last `val_fraction` of the tokens is val. For a folder that
is the end of its last documents (in path order); a bpe tokenizer learns from the first
(1 - val_fraction) of the text's bytes, so val stays unseen.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from tqdm import tqdm

from tinygpt.config import DataConfig
from tinygpt.data.sources import Source, TextReader, sha256_of
from tinygpt.data.token_files import DOCUMENT_SEPARATOR, PREPARE_FORMAT, TokenFiles
from tinygpt.errors import UserError
from tinygpt.files import cache_home, temp_dir, temp_file
from tinygpt.tokenizers import (
    Tokenizer,
    TrainOptions,
    load_tokenizer,
    save_tokenizer,
    tokenizer_kind,
)

META_FILE = "meta.json"
TOKENIZER_FILE = "tokenizer.json"
TEMP_PREFIX = ".tmp-"  # a preparation in progress, or one that was killed
ABANDONED_AFTER_S = 24 * 3600


@dataclass(frozen=True)
class Corpus:
    name: str
    url: str
    sha256: str
    description: str


CORPORA = {
    "tinyshakespeare": Corpus(
        name="tinyshakespeare",
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        description="40,000 lines of Shakespeare's plays, 1,115,394 characters",
    ),
}


@dataclass
class PreparedData:
    """A corpus as token ids, split into train and val, with its tokenizer."""

    source: str
    train: np.ndarray  # (N_train,) uint16 or uint32, a read-only memmap
    val: np.ndarray  # (N_val,)
    tokenizer: Tokenizer
    folder: Path
    split_bytes: dict[str, int]  # bytes of corpus text in each split
    characters: int  # of the whole corpus

    def tokens_per_byte(self, split: str) -> float:
        """What turns a loss per token into a loss per byte of text, for this split."""
        tokens = len(self.train if split == "train" else self.val)
        return tokens / max(self.split_bytes[split], 1)


def corpus_cache_path(corpus: Corpus) -> Path:
    return cache_home() / "corpora" / corpus.name / "input.txt"


def resolve_corpus(name_or_path: str) -> Path:
    """The local file (or folder) for a registered corpus name (downloading it once) or a
    path."""
    if name_or_path in CORPORA:
        corpus = CORPORA[name_or_path]
        path = corpus_cache_path(corpus)
        return path if path.exists() else download(corpus)
    path = Path(name_or_path).expanduser()
    if not path.exists():
        known = ", ".join(CORPORA)
        raise UserError(
            f"no corpus named {name_or_path!r} and no such file or folder (known: {known})"
        )
    if not (path.is_file() or path.is_dir()):
        raise UserError(f"corpus path is not a file or a folder: {path}")
    return path


def resolve_source(name_or_path: str) -> Source:
    return Source.from_path(name_or_path, resolve_corpus(name_or_path))


def download(corpus: Corpus) -> Path:
    """Fetch a registered corpus into the cache, with a progress bar and checksum check."""
    return _store_verified(corpus, lambda out: _fetch(corpus, out))


def _store_verified(corpus: Corpus, write: Callable[[BinaryIO], None]) -> Path:
    """Write a corpus into a temporary file in the cache, check its sha256 and only then
    rename it into place: the cache never holds a partial or wrong copy."""
    dest = corpus_cache_path(corpus)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_file(dest.parent, ".incoming-")
    try:
        with tmp.open("wb") as out:
            write(out)
        _check_sha256(tmp, corpus)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _fetch(corpus: Corpus, out: BinaryIO) -> None:
    try:
        with urllib.request.urlopen(corpus.url, timeout=30) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {corpus.name}")
            with bar:
                for chunk in iter(lambda: response.read(1 << 16), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(
            f"could not download {corpus.name} from {corpus.url} ({reason}); offline, "
            f"use a local copy: `tinygpt data {corpus.name} --from FILE` or `--data FILE`"
        ) from None


def _check_sha256(path: Path, corpus: Corpus) -> None:
    actual = sha256_of(path)
    if actual != corpus.sha256:
        raise UserError(
            f"{corpus.name}: checksum mismatch (expected sha256 {corpus.sha256}, got {actual}); "
            "the file was not kept"
        )


def import_local_copy(corpus: Corpus, source: Path) -> Path:
    """Put a local copy of a registered corpus into the cache, after checking its checksum."""
    if source.is_dir():
        raise UserError(f"{source} is a directory; --from takes the corpus file itself")
    if not source.is_file():
        raise UserError(f"no such file: {source}")
    with source.open("rb") as copy:
        return _store_verified(corpus, lambda out: shutil.copyfileobj(copy, out))


def prepare(config: DataConfig, tokenizer: Tokenizer | None = None) -> PreparedData:
    """Tokenize and split a corpus, reusing an earlier preparation when nothing changed.

    With `tokenizer` (a trained model's own) the corpus is encoded with it rather than with
    a new one: what evaluating or fine-tuning a model on any text needs. The preparation
    that training made is reused where it holds that very tokenizer.
    """
    source = resolve_source(config.dataset)
    folder = cache_home() / "prepared" / _prepare_key(source, config)
    if tokenizer is not None and not _holds(folder, tokenizer):
        folder = folder.parent / _prepare_key(source, config, tokenizer)
    if not (folder / META_FILE).exists():
        _write_prepared(source, config, folder, tokenizer)
    return _load_prepared(config.dataset, folder)


def _holds(folder: Path, tokenizer: Tokenizer) -> bool:
    """Whether a complete preparation was encoded with this tokenizer."""
    if not (folder / META_FILE).exists():
        return False
    saved = json.loads((folder / TOKENIZER_FILE).read_text(encoding="utf-8"))
    return saved == _as_json(tokenizer)


def _as_json(tokenizer: Tokenizer) -> dict:
    return json.loads(json.dumps(tokenizer.to_dict()))


def _prepare_key(source: Source, config: DataConfig, tokenizer: Tokenizer | None = None) -> str:
    if tokenizer is None:  # one trained here from the config
        vocabulary = f"{config.tokenizer}:{config.vocab_size}"
    else:
        described = json.dumps(_as_json(tokenizer), sort_keys=True).encode()
        vocabulary = "given:" + hashlib.sha256(described).hexdigest()
    recipe = ":".join(
        str(part)
        for part in (PREPARE_FORMAT, source.fingerprint(), vocabulary, config.val_fraction)
    )
    return hashlib.sha256(recipe.encode()).hexdigest()[:20]


def _write_prepared(
    source: Source, config: DataConfig, folder: Path, tokenizer: Tokenizer | None
) -> None:
    """Train the tokenizer (unless one is given), encode the corpus into token files and
    split them, all in a temporary folder that becomes `folder` only when every file in it
    is whole."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(folder.parent)
    tmp = temp_dir(folder.parent, TEMP_PREFIX)
    try:
        tokenizer = tokenizer or _train_tokenizer(source, config)
        tokens = TokenFiles.write(source, tokenizer, tmp, config.val_fraction)
        save_tokenizer(tokenizer, tmp / TOKENIZER_FILE)
        (tmp / META_FILE).write_text(json.dumps(tokens.meta()))
        try:
            tmp.rename(folder)
        except OSError:  # another process prepared the same corpus first: keep theirs
            if not (folder / META_FILE).exists():
                raise
    except OSError as exc:
        raise UserError(
            f"cannot prepare {source.name} in {folder.parent}: {exc.strerror or exc}"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_abandoned(prepared: Path) -> None:
    """Temporary folders of preparations killed long ago (none takes a day)."""
    for tmp in prepared.glob(f"{TEMP_PREFIX}*"):
        try:
            if time.time() - tmp.stat().st_mtime > ABANDONED_AFTER_S:
                shutil.rmtree(tmp, ignore_errors=True)
        except FileNotFoundError:  # another process removed it first
            pass


def _train_tokenizer(source: Source, config: DataConfig) -> Tokenizer:
    """A tokenizer of the configured kind, built on the text its kind learns from."""
    kind = tokenizer_kind(config.tokenizer)
    limit = {
        "corpus": None,
        "train split": int(source.nbytes * (1 - config.val_fraction)),
        "nothing": 0,
    }[kind.trained_on]
    options = TrainOptions(
        vocab_size=config.vocab_size,
        file=config.tokenizer_file,
        corpus_bytes=source.nbytes if limit is None else limit,
    )
    if limit == 0:
        return kind.train([], options)
    pieces = TextReader(source, any_bytes=kind.reads_any_bytes).pieces(byte_limit=limit)
    return kind.train((p if isinstance(p, str) else DOCUMENT_SEPARATOR for p in pieces), options)


def _load_prepared(source: str, folder: Path) -> PreparedData:
    meta = json.loads((folder / META_FILE).read_text())
    dtype = np.dtype(meta["dtype"])
    return PreparedData(
        source=source,
        train=_memmap(folder / "train.bin", dtype),
        val=_memmap(folder / "val.bin", dtype),
        tokenizer=load_tokenizer(folder / TOKENIZER_FILE),
        folder=folder,
        split_bytes={split: int(meta["splits"][split]["bytes"]) for split in ("train", "val")},
        characters=int(meta["characters"]),
    )


def _memmap(path: Path, dtype: np.dtype) -> np.ndarray:
    # numpy cannot memory-map an empty file; an empty split is a plain empty array
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")
