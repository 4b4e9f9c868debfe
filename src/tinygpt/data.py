"""Corpora: the registry of named corpora, download into a cache, and preparation into tokens.

A corpus is a registered name (downloaded once, checksum verified) or a local UTF-8 text file.
Preparation encodes it once into `train.bin` / `val.bin` (token ids, read back through numpy
memmap) and `tokenizer.json`, in a cache folder keyed by the corpus' content and the data
config, so an unchanged corpus is never prepared twice. Every file is written under a
temporary name and renamed into place: an interrupted run never leaves a partial file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import platformdirs
from tqdm import tqdm

from tinygpt.config import DataConfig
from tinygpt.errors import UserError, note
from tinygpt.files import temp_dir, temp_file
from tinygpt.tokenizers import (
    Tokenizer,
    build_tokenizer,
    load_tokenizer,
    save_tokenizer,
)

PREPARE_FORMAT = 2  # bump when the prepared files change meaning (2: CRLF read as LF)


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


def cache_home() -> Path:
    """Where downloads and prepared data live: $TINYGPT_HOME, else the user's cache folder."""
    return Path(os.environ.get("TINYGPT_HOME") or platformdirs.user_cache_dir("tinygpt"))


def corpus_cache_path(corpus: Corpus) -> Path:
    return cache_home() / "corpora" / corpus.name / "input.txt"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_corpus(name_or_path: str) -> Path:
    """The local text file for a registered corpus name (downloading it once) or a path."""
    if name_or_path in CORPORA:
        corpus = CORPORA[name_or_path]
        path = corpus_cache_path(corpus)
        return path if path.exists() else download(corpus)
    path = Path(name_or_path).expanduser()
    if not path.exists():
        known = ", ".join(CORPORA)
        raise UserError(f"no corpus named {name_or_path!r} and no such file (known: {known})")
    if not path.is_file():
        raise UserError(f"corpus path is not a file: {path}")
    return path


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


def read_text(path: Path) -> str:
    """A corpus file as text: UTF-8 and not empty, or a clear error."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read corpus {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"corpus {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
        ) from None
    if not text:
        raise UserError(f"corpus {path} is empty")
    return text


def normalise(text: str, path: Path) -> str:
    """Windows line endings (CRLF) become LF, one token instead of two; said once, when the
    corpus is prepared."""
    if "\r\n" in text:
        note(f"{path} has Windows line endings (CRLF); they are read as \\n")
        text = text.replace("\r\n", "\n")
    return text


def check_vocabulary(text: str, path: Path) -> None:
    """A model needs at least two symbols to choose between."""
    distinct = set(text)
    if len(distinct) < 2:
        raise UserError(
            f"corpus {path} has a vocabulary of {len(distinct)} character ({''.join(distinct)!r});"
            " there is nothing to learn, use a real text"
        )


def split_point(n_tokens: int, val_fraction: float) -> int:
    """The notebook's split: the first (1 - val_fraction) of the tokens train, the rest val."""
    return int((1 - val_fraction) * n_tokens)


def prepare(config: DataConfig) -> PreparedData:
    """Tokenize and split a corpus, reusing an earlier preparation when nothing changed."""
    path = resolve_corpus(config.dataset)
    key = _prepare_key(path, config)
    folder = cache_home() / "prepared" / key
    if not (folder / "meta.json").exists():
        text = normalise(read_text(path), path)
        check_vocabulary(text, path)
        _write_prepared(text, config, folder)
    return _load_prepared(config.dataset, folder)


def _prepare_key(path: Path, config: DataConfig) -> str:
    recipe = f"{PREPARE_FORMAT}:{sha256_of(path)}:{config.tokenizer}:{config.val_fraction!r}"
    return hashlib.sha256(recipe.encode()).hexdigest()[:20]


def _write_prepared(text: str, config: DataConfig, folder: Path) -> None:
    tokenizer = build_tokenizer(config.tokenizer, text)
    dtype = np.uint16 if tokenizer.vocab_size <= 65_535 else np.uint32
    ids = tokenizer.encode_array(text).astype(dtype)
    n_train = split_point(len(ids), config.val_fraction)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(folder.parent, ".tmp-")
    try:
        ids[:n_train].tofile(tmp / "train.bin")
        ids[n_train:].tofile(tmp / "val.bin")
        save_tokenizer(tokenizer, tmp / "tokenizer.json")
        meta = {"format": PREPARE_FORMAT, "dtype": np.dtype(dtype).name, "characters": len(text)}
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            tmp.rename(folder)
        except OSError:  # another process prepared the same corpus first: keep theirs
            if not (folder / "meta.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_prepared(source: str, folder: Path) -> PreparedData:
    meta = json.loads((folder / "meta.json").read_text())
    dtype = np.dtype(meta["dtype"])
    return PreparedData(
        source=source,
        train=_memmap(folder / "train.bin", dtype),
        val=_memmap(folder / "val.bin", dtype),
        tokenizer=load_tokenizer(folder / "tokenizer.json"),
        folder=folder,
    )


def _memmap(path: Path, dtype: np.dtype) -> np.ndarray:
    # numpy cannot memory-map an empty file; an empty split is a plain empty array
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")
