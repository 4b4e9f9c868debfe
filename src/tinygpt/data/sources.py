"""Where a corpus' text comes from: one UTF-8 file or a folder of `.txt` files, read as a
stream of pieces in bounded memory, whatever its size.

A folder's documents are the `.txt` files under it (subfolders included, hidden ones not) in
the order of their paths relative to it (compared as text), so the same folder is always
read the same way. Windows line endings (CRLF) are read as LF. Pieces are cut only after a
single newline between two non-space characters: no tokenizer here joins text across such a
point (GPT-2's word pattern ends a word there and starts another), so encoding piece by
piece gives the same tokens as encoding the whole text at once. A file with no such point
(one endless line) is read whole.
"""

from __future__ import annotations

import codecs
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tinygpt.errors import UserError

PIECE_BYTES = 1 << 16  # read this much at a time; a piece is cut at the last safe point in it


class DocumentEnd:
    """Marks the end of one document of a folder, before the next one."""

    def __repr__(self) -> str:
        return "DOCUMENT_END"


DOCUMENT_END = DocumentEnd()
Piece = str | DocumentEnd


@dataclass(frozen=True)
class Source:
    """A corpus on disk: its name as the user gave it and its files in reading order."""

    name: str
    files: tuple[Path, ...]
    root: Path  # the file itself, or the folder

    @classmethod
    def from_path(cls, name: str, path: Path) -> Source:
        if path.is_dir():
            files = tuple(sorted(_documents(path), key=lambda p: p.relative_to(path).as_posix()))
            if not files:
                raise UserError(f"folder {path} has no .txt files")
            return cls(name, files, path)
        return cls(name, (path,), path)

    @property
    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    def fingerprint(self) -> str:
        """A digest of the text (and, for a folder, of each document's path in it)."""
        digest = hashlib.sha256()
        for path in self.files:
            if path != self.root:
                digest.update(path.relative_to(self.root).as_posix().encode() + b"\0")
            digest.update(sha256_of(path).encode())
        return digest.hexdigest()


def _documents(folder: Path) -> Iterator[Path]:
    for path in folder.rglob("*.txt"):
        hidden = any(part.startswith(".") for part in path.relative_to(folder).parts)
        if path.is_file() and not hidden:
            yield path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class TextReader:
    """Read a source piece by piece, counting what it read (bytes of the files, characters
    after normalisation, and whether the text has two distinct characters at all)."""

    def __init__(self, source: Source, any_bytes: bool = False) -> None:
        self.source = source
        # any bytes: what is not UTF-8 comes through as surrogate escapes, for a tokenizer
        # that reads them (Tokenizer.reads_any_bytes); else it is refused with its offset
        self.any_bytes = any_bytes
        self.bytes_read = 0
        self.characters = 0
        self.distinct: set[str] = set()  # up to two: enough to know there is something to learn
        self.saw_crlf = False

    def pieces(self, byte_limit: int | None = None) -> Iterator[Piece]:
        """The text, with DOCUMENT_END between documents; only its first `byte_limit` bytes
        (of UTF-8 text) if given."""
        room = byte_limit
        for n, path in enumerate(self.source.files):
            if n:
                yield DOCUMENT_END
            for piece in self._file_pieces(path):
                if room is not None:
                    data = piece.encode("utf-8", errors="surrogateescape")
                    if len(data) >= room:
                        yield data[:room].decode("utf-8", errors="ignore")
                        return
                    room -= len(data)
                yield piece

    def _file_pieces(self, path: Path) -> Iterator[str]:
        held = ""  # text after the last safe cut, waiting for what follows it
        undecoded = b""  # the first bytes of a character cut by a read
        escaping = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
        carriage_return = ""  # at the end of a read: it may begin a CRLF
        offset = 0  # of the next read in the file
        try:
            with path.open("rb") as f:
                for block in iter(lambda: f.read(PIECE_BYTES), b""):
                    if self.any_bytes:
                        text = escaping.decode(block)
                    else:
                        start = offset - len(undecoded)
                        text, undecoded = _decode(undecoded + block, path, start)
                    offset += len(block)
                    self.bytes_read += len(block)
                    text = carriage_return + text
                    carriage_return = "\r" if text.endswith("\r") else ""
                    text = held + self._normalised(text.removesuffix(carriage_return))
                    cut = _last_safe_cut(text)
                    piece, held = text[:cut], text[cut:]
                    if piece:
                        yield self._counted(piece)
        except OSError as exc:
            raise UserError(f"cannot read corpus {path}: {exc.strerror}") from None
        if undecoded:
            raise _not_utf8(path, offset - len(undecoded), undecoded[0])
        held += escaping.decode(b"", final=True)  # bytes of a character the file cut short
        if held + carriage_return:
            yield self._counted(held + carriage_return)

    def _normalised(self, text: str) -> str:
        if "\r\n" in text:
            self.saw_crlf = True
            return text.replace("\r\n", "\n")
        return text

    def _counted(self, piece: str) -> str:
        self.characters += len(piece)
        if len(self.distinct) < 2:
            self.distinct.update(piece[:4096])
            if len(self.distinct) < 2:
                self.distinct.update(piece)
        return piece


def _decode(data: bytes, path: Path, start: int) -> tuple[str, bytes]:
    """UTF-8 text of `data` (which begins at byte `start` of the file) and the bytes of a
    character that the read cut in two."""
    try:
        return data.decode("utf-8"), b""
    except UnicodeDecodeError as exc:
        if exc.reason == "unexpected end of data" and exc.end == len(data):
            return data[: exc.start].decode("utf-8"), data[exc.start :]
        raise _not_utf8(path, start + exc.start, data[exc.start]) from None


def _not_utf8(path: Path, offset: int, byte: int) -> UserError:
    return UserError(f"corpus {path} is not UTF-8 text (byte 0x{byte:02x} at offset {offset})")


def _last_safe_cut(text: str) -> int:
    """Just after the text's last newline that has a non-space character on each side (0 if
    none). GPT-2's pattern makes such a newline a word of its own, whether or not the text
    goes on after it; after a run of spaces or newlines it would not be (the run's last
    character joins what follows)."""
    at = len(text) - 1
    while (at := text.rfind("\n", 1, at)) >= 1:
        if not text[at - 1].isspace() and not text[at + 1].isspace():
            return at + 1
    return 0
