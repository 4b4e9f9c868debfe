"""The tokenizer kinds: byte, bpe and gpt2 beside char; round trips of any text, GPT-2's
ids, a trained BPE that is saved and trained again the same, and streamed decoding."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tinygpt.config import DataConfig
from tinygpt.data.corpora import prepare
from tinygpt.errors import UserError
from tinygpt.tokenizers import (
    END_OF_TEXT,
    BpeTokenizer,
    ByteTokenizer,
    CharTokenizer,
    Gpt2Tokenizer,
    TextDecoder,
    Tokenizer,
    TrainOptions,
    load_tokenizer,
    save_tokenizer,
    tokenizer_from_dict,
)
from tinygpt.tokenizers.bpe import default_vocab_size

from .conftest import tinygpt

MIXED = "Hello NanoGPT! 床前明月光，疑是地上霜。 naïve café 👋🏽 🇫🇷 e\u0301 \t\n\n  x"
ANY_TEXT = st.text(max_size=60)  # any code points but surrogates: Chinese, emoji, controls


@pytest.fixture(scope="module")
def bpe(shakespeare_path: Path) -> BpeTokenizer:
    text = shakespeare_path.read_text(encoding="utf-8")[:300_000]
    return BpeTokenizer.from_text(text, TrainOptions(vocab_size=512))


@pytest.fixture(scope="module")
def gpt2(gpt2_ranks: Path, tmp_path_factory: pytest.TempPathFactory) -> Gpt2Tokenizer:
    home = tmp_path_factory.mktemp("gpt2-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TINYGPT_HOME", str(home))
        return Gpt2Tokenizer.train([], TrainOptions(file=str(gpt2_ranks)))


@pytest.fixture(params=["byte", "bpe", "gpt2"])
def open_vocabulary(request: pytest.FixtureRequest) -> Tokenizer:
    """The kinds for which no text is outside the vocabulary."""
    return ByteTokenizer() if request.param == "byte" else request.getfixturevalue(request.param)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=ANY_TEXT)
@example(text=MIXED)
def test_any_text_round_trips_with_no_unknown_token(open_vocabulary: Tokenizer, text: str) -> None:
    ids = open_vocabulary.encode(text)
    assert all(0 <= i < open_vocabulary.vocab_size for i in ids)
    assert open_vocabulary.decode(ids) == text
    assert open_vocabulary.encode_array(text).tolist() == ids


@settings(max_examples=100, deadline=None)
@given(text=ANY_TEXT.filter(bool))
def test_char_round_trips_the_text_it_was_built_on(text: str) -> None:
    tokenizer = CharTokenizer.from_text(text)
    assert tokenizer.decode(tokenizer.encode(text)) == text


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=ANY_TEXT)
@example(text=MIXED)
def test_streamed_text_never_shows_a_replacement_character(
    open_vocabulary: Tokenizer, text: str
) -> None:
    """Fed one token at a time, the decoder shows each character whole, once it is."""
    decoder = TextDecoder(open_vocabulary)
    pieces = [decoder.feed(i) for i in open_vocabulary.encode(text)] + [decoder.flush()]
    assert "".join(pieces) == text
    assert "\ufffd" not in "".join(pieces) or "\ufffd" in text


def test_a_character_split_over_tokens_waits_for_its_last_byte() -> None:
    decoder = TextDecoder(ByteTokenizer())
    ids = ByteTokenizer().encode("好😀")  # 3 + 4 bytes
    assert [decoder.feed(i) for i in ids] == ["", "", "好", "", "", "", "😀"]
    assert decoder.feed(0xE5) == "" and decoder.flush() == "\\xe5"  # a cut one, at the end


def test_gpt2_gives_tiktoken_ids(gpt2: Gpt2Tokenizer, gpt2_ranks: Path, tmp_path, monkeypatch):
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    reference = tiktoken.Encoding(
        name="gpt2",
        pat_str=r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
        mergeable_ranks=load_tiktoken_bpe(str(gpt2_ranks)),
        special_tokens={END_OF_TEXT: 50256},
    )
    assert gpt2.vocab_size == 50257 and gpt2.eot_id == 50256
    # ids every GPT-2 user knows
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode(" the\n") == [262, 198]
    for text in ("Hello NanoGPT", MIXED, "First Citizen:\nBefore we proceed", "  indent\r\n"):
        assert gpt2.encode(text) == reference.encode_ordinary(text)
        assert gpt2.encode_batch([text, text]).tolist() == reference.encode_ordinary(text) * 2
    assert gpt2.decode([50256]) == END_OF_TEXT


def test_gpt2_without_its_ranks_file_says_where_to_put_it(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"--data.tokenizer_file PATH, or put it at .*gpt2"):
        Gpt2Tokenizer.train([], TrainOptions())
    forged = tmp_path / "gpt2.tiktoken"
    forged.write_text("aGk= 0\n")
    with pytest.raises(UserError, match=r"is not GPT-2's gpt2\.tiktoken: sha256"):
        Gpt2Tokenizer.train([], TrainOptions(file=str(forged)))
    with pytest.raises(UserError, match="no such file"):
        Gpt2Tokenizer.train([], TrainOptions(file=str(tmp_path / "missing")))


def test_gpt2_is_found_again_from_its_json(gpt2: Gpt2Tokenizer, gpt2_ranks: Path, tmp_path):
    """Given once, the ranks file is kept in the cache: a saved tokenizer loads without it."""
    Gpt2Tokenizer.train([], TrainOptions(file=str(gpt2_ranks)))  # into this test's cache
    saved = tmp_path / "tokenizer.json"
    save_tokenizer(gpt2, saved)
    assert len(saved.read_bytes()) < 200  # a name and a checksum, not the ranks
    assert load_tokenizer(saved).encode(MIXED) == gpt2.encode(MIXED)


def test_bpe_is_identical_after_save_and_load(bpe: BpeTokenizer, tmp_path: Path) -> None:
    saved = tmp_path / "tokenizer.json"
    save_tokenizer(bpe, saved)
    loaded = load_tokenizer(saved)
    assert isinstance(loaded, BpeTokenizer) and loaded.to_dict() == bpe.to_dict()
    assert loaded.tokens() == bpe.tokens() and loaded.encode(MIXED) == bpe.encode(MIXED)
    assert json.loads(saved.read_text())["tokenizer"]["model"]["type"] == "BPE"


def test_bpe_is_reproducible_from_its_corpus(bpe: BpeTokenizer, shakespeare_path: Path) -> None:
    text = shakespeare_path.read_text(encoding="utf-8")[:300_000]
    again = BpeTokenizer.from_text(text, TrainOptions(vocab_size=512))
    assert again.to_dict() == bpe.to_dict()
    in_pieces = BpeTokenizer.train(
        [text[i : i + 10_000] for i in range(0, len(text), 10_000)], TrainOptions(vocab_size=512)
    )
    assert in_pieces.vocab_size == 512
    other = BpeTokenizer.from_text(text[:150_000], TrainOptions(vocab_size=512))
    assert other.to_dict() != bpe.to_dict()  # it is the corpus that makes it


def test_bpe_learns_the_corpus_words(bpe: BpeTokenizer) -> None:
    assert bpe.vocab_size == 512 and bpe.eot_id == 0 and bpe.tokens()[0] == END_OF_TEXT
    assert len(bpe.encode("ROMEO:\nWhat is the matter?")) <= 16  # 26 characters
    assert len(bpe.encode("😀")) == 4  # never seen: its four bytes


def test_bpe_vocabulary_size_is_checked_and_defaults_with_the_corpus() -> None:
    with pytest.raises(UserError, match="too small for bpe"):
        BpeTokenizer.from_text("abc abc", TrainOptions(vocab_size=100))
    assert default_vocab_size(1_115_394) == 512
    assert default_vocab_size(1 << 30) == 16384 and default_vocab_size(1000) == 512
    assert default_vocab_size(1 << 40) == 32768


def test_the_kinds_save_only_json(bpe: BpeTokenizer) -> None:
    for tokenizer in (ByteTokenizer(), bpe, CharTokenizer.from_text("ab")):
        values = json.loads(json.dumps(tokenizer.to_dict()))
        assert tokenizer_from_dict(values).tokens() == tokenizer.tokens()
    with pytest.raises(UserError, match="invalid tokenizer"):
        tokenizer_from_dict({"type": "bpe", "tokenizer": {"model": "nonsense"}})


def test_tokens_show_partial_characters_as_bytes() -> None:
    tokens = ByteTokenizer().tokens()
    assert len(tokens) == 256 and tokens[ord("a")] == "a" and tokens[0xE5] == "\\xe5"


def test_the_byte_tokenizer_trains_on_any_bytes_and_samples_them_escaped(
    cli, tmp_path: Path
) -> None:
    """A byte model reads any file, text or not; the char tokenizer still refuses one."""
    rng = np.random.default_rng(0)
    noise = bytes(b for b in rng.integers(0, 256, 30_000, dtype=np.uint8) if b != 13)  # no CR
    corpus = tmp_path / "noise.bin"
    corpus.write_bytes(noise)
    prepared = prepare(DataConfig(dataset=str(corpus), tokenizer="byte"))
    tokens = np.concatenate([prepared.train, prepared.val]).astype(np.uint8)
    assert tokens.tobytes() == noise  # every byte, as it is
    run = tmp_path / "run"
    code, _, err = cli(
        "train", "--preset", "bigram", "--data", corpus, "--data.tokenizer", "byte",
        "--steps", "20", "--train.eval_interval", "10", "--train.eval_batches", "2",
        "--train.sample_tokens", "0", "--out", run,
    )  # fmt: skip
    assert code == 0, err
    code, out, _ = cli("sample", run, "--max-new-tokens", "300", "--seed", "1")
    assert code == 0 and "\\x" in out and "\ufffd" not in out  # invalid bytes shown escaped
    # --raw: the same sample as the bytes themselves, on stdout and in --output
    result = subprocess.run(
        tinygpt("sample", run, "--max-new-tokens", "300", "--seed", "1", "--raw",
                "--output", tmp_path / "raw.bin"),
        capture_output=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    raw = result.stdout
    assert raw.decode("utf-8", errors="backslashreplace") == out
    assert raw != raw.decode("utf-8", errors="replace").encode()  # bytes that are not UTF-8
    assert (tmp_path / "raw.bin").read_bytes() == raw
    code, _, err = cli("train", "--preset", "bigram", "--data", corpus, "--out", tmp_path / "c")
    assert code == 2 and "is not UTF-8 text (byte 0x" in err
