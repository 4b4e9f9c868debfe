"""Corpora: registry, download and cache, local files, preparation, bad input."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from tinygpt.config import DataConfig
from tinygpt.data import corpora as data
from tinygpt.errors import UserError


@pytest.fixture
def local_url(monkeypatch: pytest.MonkeyPatch):
    """Point the registered corpus at a local file:// address (no network)."""

    def point_at(path: Path) -> data.Corpus:
        corpus = data.CORPORA["tinyshakespeare"]
        local = data.Corpus(corpus.name, path.resolve().as_uri(), corpus.sha256, corpus.description)
        monkeypatch.setitem(data.CORPORA, "tinyshakespeare", local)
        return local

    return point_at


def test_registry_names_the_canonical_address(shakespeare_path: Path) -> None:
    corpus = data.CORPORA["tinyshakespeare"]
    assert corpus.url.endswith("karpathy/char-rnn/master/data/tinyshakespeare/input.txt")
    assert hashlib.sha256(shakespeare_path.read_bytes()).hexdigest() == corpus.sha256


def test_download_shows_progress_and_verifies_checksum(
    local_url, isolated_home: Path, capsys: pytest.CaptureFixture[str], shakespeare_path: Path
) -> None:
    local_url(shakespeare_path)
    path = data.resolve_corpus("tinyshakespeare")
    assert path == isolated_home / "corpora" / "tinyshakespeare" / "input.txt"
    assert path.read_bytes() == shakespeare_path.read_bytes()
    assert "downloading tinyshakespeare" in capsys.readouterr().err
    assert data.resolve_corpus("tinyshakespeare") == path  # cached: no second download
    assert "downloading" not in capsys.readouterr().err


def test_checksum_mismatch_keeps_no_file(local_url, text_file, isolated_home: Path) -> None:
    local_url(text_file("not shakespeare at all"))
    with pytest.raises(UserError, match="checksum mismatch"):
        data.resolve_corpus("tinyshakespeare")
    assert list((isolated_home / "corpora" / "tinyshakespeare").iterdir()) == []


def test_offline_error_names_address_and_local_copy(
    local_url, tmp_path: Path, isolated_home: Path
) -> None:
    corpus = local_url(tmp_path / "unreachable" / "input.txt")
    with pytest.raises(UserError) as info:
        data.resolve_corpus("tinyshakespeare")
    message = str(info.value)
    assert corpus.url in message and "--from FILE" in message and "--data FILE" in message
    assert "\n" not in message
    assert list((isolated_home / "corpora" / "tinyshakespeare").iterdir()) == []


def test_data_command_takes_a_verified_local_copy(
    cli, isolated_home: Path, text_file, shakespeare_path: Path
) -> None:
    code, out, _ = cli("data", "tinyshakespeare", "--from", shakespeare_path)
    assert code == 0
    cached = isolated_home / "corpora" / "tinyshakespeare" / "input.txt"
    said, where = out.strip().splitlines()
    assert said == f"sha256 matched (86c4e6aa9db7...): {shakespeare_path} is tinyshakespeare"
    assert where == str(cached) and cached.read_bytes() == shakespeare_path.read_bytes()
    code, out, _ = cli("data")
    assert code == 0 and "tinyshakespeare" in out and "cached" in out
    cached.unlink()
    code, _, err = cli("data", "tinyshakespeare", "--from", text_file("forgery"))
    assert code == 2 and "checksum mismatch" in err and not cached.exists()
    code, _, err = cli("data", "wikipedia")
    assert code == 2 and "unknown corpus 'wikipedia'" in err


def test_prepare_splits_like_the_notebook(shakespeare: Path, shakespeare_path: Path) -> None:
    prepared = data.prepare(DataConfig())
    assert (len(prepared.train), len(prepared.val)) == (1_003_854, 111_540)
    assert isinstance(prepared.train, np.memmap) and prepared.train.dtype == np.uint16
    text = shakespeare_path.read_text(encoding="utf-8")
    assert prepared.tokenizer.decode(prepared.train[:14].tolist()) == text[:14]
    assert prepared.tokenizer.decode(prepared.val[-10:].tolist()) == text[-10:]
    assert (prepared.folder / "tokenizer.json").is_file()


def test_prepare_is_reused_until_the_corpus_changes(text_file, isolated_home: Path) -> None:
    corpus = text_file("the quick brown fox jumps over the lazy dog\n" * 20)
    config = DataConfig(dataset=str(corpus))
    first = data.prepare(config)
    stamp = (first.folder / "train.bin").stat().st_mtime_ns
    again = data.prepare(config)
    assert again.folder == first.folder
    assert (again.folder / "train.bin").stat().st_mtime_ns == stamp
    corpus.write_text("a different corpus, with other letters: XYZ\n" * 20, encoding="utf-8")
    changed = data.prepare(config)
    assert changed.folder != first.folder and "X" in changed.tokenizer.itos
    other_split = data.prepare(DataConfig(dataset=str(corpus), val_fraction=0.2))
    assert other_split.folder != changed.folder
    assert not [p for p in (isolated_home / "prepared").iterdir() if p.name.startswith(".")]


def test_vocabulary_past_uint16_is_stored_as_uint32(text_file) -> None:
    chars = [chr(c) for c in range(0x20, 0x20 + 70_000) if not 0xD800 <= c <= 0xDFFF]
    prepared = data.prepare(DataConfig(dataset=str(text_file("".join(chars) * 2))))
    assert prepared.tokenizer.vocab_size > 65_535
    assert prepared.train.dtype == np.uint32
    assert int(prepared.val.max()) < prepared.tokenizer.vocab_size


def test_any_local_utf8_file_is_a_corpus(text_file) -> None:
    prepared = data.prepare(DataConfig(dataset=str(text_file("床前明月光，疑是地上霜。\n" * 10))))
    assert prepared.tokenizer.vocab_size == 13  # 10 hanzi, two marks, newline
    assert prepared.tokenizer.decode(prepared.train[:5].tolist()) == "床前明月光"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no corpus named"),
        (b"", "is empty"),
        (b"caf\xe9 latin-1", r"not UTF-8 text \(byte 0xe9 at offset 3\)"),
        ("dir", "has no .txt files"),
    ],
)
def test_bad_corpus_files_are_clear_errors(tmp_path: Path, content, message: str) -> None:
    path = tmp_path / "corpus.txt"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        data.prepare(DataConfig(dataset=str(path)))
    prepared = Path(os.environ["TINYGPT_HOME"]) / "prepared"
    assert not prepared.exists() or not list(prepared.iterdir())  # nothing half-written
