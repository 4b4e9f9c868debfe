"""Corpora for every tokenizer: folders of documents, streaming preparation that gives the
tokens of the whole text, bytes per split for bits per byte, and no partial cache entry."""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from prepare_speed import write_corpus  # the benchmark's mixed corpus, made the same way
from tinygpt.checkpoint import load_checkpoint
from tinygpt.config import DataConfig, SampleConfig
from tinygpt.data import corpora as data
from tinygpt.data import sources, token_files
from tinygpt.errors import UserError
from tinygpt.generate import generate, sample
from tinygpt.tokenizers import END_OF_TEXT

from .conftest import wait_for_cpu_seconds

TRICKY = (
    "First Citizen:\r\nBefore we proceed,\r\n\r\n  indented  \n\n\n\tTab\n"
    " 床前明月光，疑是地上霜。\n"
    "👋🏽 🇫🇷 naïve e\u0301 \u3000全角\n\n\n   \nx\n"
)


def whole(prepared: data.PreparedData) -> list[int]:
    return np.concatenate([prepared.train, prepared.val]).tolist()


def config_for(kind: str, dataset: Path, gpt2_file: str = "", **values) -> DataConfig:
    return DataConfig(dataset=str(dataset), tokenizer=kind, tokenizer_file=gpt2_file, **values)


@pytest.fixture(params=["char", "byte", "bpe", "gpt2"])
def kind(request: pytest.FixtureRequest) -> tuple[str, str]:
    """A tokenizer kind and the ranks file it needs (gpt2 only)."""
    ranks = str(request.getfixturevalue("gpt2_ranks")) if request.param == "gpt2" else ""
    return request.param, ranks


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_streaming_gives_the_tokens_of_the_whole_text(
    kind, newline: str, shakespeare_path: Path, text_file, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read in pieces of under 1 KB, encoded three at a time: the same tokens as the whole
    (normalised) text encoded at once."""
    name, ranks = kind
    text = shakespeare_path.read_text(encoding="utf-8")[:60_000] + TRICKY * 50
    text = text.replace("\n", newline)
    corpus = text_file(text)
    monkeypatch.setattr(sources, "PIECE_BYTES", 997)
    monkeypatch.setattr(token_files, "BATCH_PIECES", 3)
    reads: list[str] = []
    counted = sources.TextReader._counted
    monkeypatch.setattr(
        sources.TextReader,
        "_counted",
        lambda self, piece: counted(self, reads.append(piece) or piece),
    )
    prepared = data.prepare(config_for(name, corpus, ranks, vocab_size=400 * (name == "bpe")))
    assert max(len(piece) for piece in reads) < 2000  # it was read in pieces
    expected = prepared.tokenizer.encode(text.replace("\r\n", "\n"))
    assert whole(prepared) == expected
    assert prepared.tokenizer.decode(whole(prepared)) == text.replace("\r\n", "\n")


def test_a_folder_is_read_in_path_order_documents_apart(
    kind, tmp_path: Path, isolated_home: Path
) -> None:
    name, ranks = kind
    folder = tmp_path / "books"
    documents = {
        "b/2.txt": "the second book.\n",
        "a.txt": "the first book.\n",
        "b/10.txt": "the third book, 床.\n",
        "c.md": "not a text file\n",
        ".hidden/x.txt": "not read\n",
    }
    for relative, text in documents.items():  # written out of order on purpose
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(text, encoding="utf-8")
    prepared = data.prepare(config_for(name, folder, ranks, val_fraction=0.2))
    text = prepared.tokenizer.decode(whole(prepared))
    separator = END_OF_TEXT if prepared.tokenizer.eot_id is not None else "\n\n"
    books = ["the first book.\n", "the third book, 床.\n", "the second book.\n"]
    assert text == separator.join(books)  # a.txt, b/10.txt, b/2.txt: path order, as text
    meta = json.loads((prepared.folder / "meta.json").read_text())
    assert meta["documents"] == 3
    assert len(prepared.val) == len(whole(prepared)) - int(0.8 * len(whole(prepared)))


def test_a_folder_prepares_the_same_wherever_and_however_it_was_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = []
    for n, order in enumerate((range(12), reversed(range(12)))):
        folder = tmp_path / f"copy{n}" / "corpus"
        folder.mkdir(parents=True)
        for i in order:
            (folder / f"doc{i:02d}.txt").write_text(f"document {i}: {'word ' * i}\n")
        monkeypatch.setenv("TINYGPT_HOME", str(tmp_path / f"home{n}"))
        prepared = data.prepare(DataConfig(dataset=str(folder), tokenizer="bpe", vocab_size=300))
        results.append(
            (
                prepared.folder.name,
                whole(prepared),
                prepared.tokenizer.to_dict(),
                prepared.split_bytes,
            )
        )
    assert results[0] == results[1]
    (folder / "doc05.txt").write_text("changed\n")
    changed = data.prepare(DataConfig(dataset=str(folder), tokenizer="bpe", vocab_size=300))
    assert changed.folder.name != results[1][0]


def test_split_bytes_count_the_text(kind, text_file) -> None:
    """Bits per byte needs each split's bytes of text: they add up to the corpus' bytes
    (LF for CRLF), whatever the tokenizer."""
    name, ranks = kind
    text = "Hello, world! 你好，世界。😀\r\n" * 400
    prepared = data.prepare(config_for(name, text_file(text), ranks))
    normalised = text.replace("\r\n", "\n")
    assert sum(prepared.split_bytes.values()) == len(normalised.encode("utf-8"))
    val_text = prepared.tokenizer.decode(prepared.val.tolist())
    assert prepared.split_bytes["val"] == len(val_text.encode("utf-8"))
    assert prepared.characters == len(normalised)


def test_bpe_learns_from_the_train_split_only(text_file) -> None:
    """A word that only the val part holds is not a token: val stays unseen."""
    text = "the cat sat on the mat.\n" * 500 + "zebrazebra\n" * 60
    prepared = data.prepare(DataConfig(dataset=str(text_file(text)), tokenizer="bpe"))
    assert not any("zebra" in t for t in prepared.tokenizer.tokens())
    assert any(" mat" in t for t in prepared.tokenizer.tokens())


def test_gpt2_prepared_as_tiktoken_encodes(gpt2_ranks: Path, shakespeare, monkeypatch) -> None:
    prepared = data.prepare(DataConfig(tokenizer="gpt2", tokenizer_file=str(gpt2_ranks)))
    assert prepared.tokenizer.vocab_size == 50257 and prepared.train.dtype == np.uint16
    assert prepared.train[:4].tolist() == [5962, 22307, 25, 198]  # "First Citizen:\n"
    # once given, the ranks file is not needed again: the cache keeps a checked copy
    again = data.prepare(DataConfig(tokenizer="gpt2"))
    assert again.folder == prepared.folder


def test_a_failed_preparation_leaves_no_cache_entry(
    text_file, isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(token_files, "_move_tail", disk_full)
    corpus = text_file("to be or not to be\n" * 100)
    with pytest.raises(UserError, match=r"cannot prepare .*No space left on device"):
        data.prepare(DataConfig(dataset=str(corpus)))
    assert list((isolated_home / "prepared").iterdir()) == []
    monkeypatch.undo()
    monkeypatch.setenv("TINYGPT_HOME", str(isolated_home))
    assert len(data.prepare(DataConfig(dataset=str(corpus))).train) > 0


def test_a_killed_preparation_leaves_nothing_that_looks_complete(
    tmp_path: Path, isolated_home: Path
) -> None:
    corpus = tmp_path / "big.txt"
    line = "Now is the winter of our discontent made glorious summer by this sun of York;\n"
    corpus.write_text(line * 600_000)  # 47 MB: a few seconds to prepare with bpe
    script = (
        "from tinygpt.data.corpora import prepare; from tinygpt.config import DataConfig; "
        f"prepare(DataConfig(dataset={str(corpus)!r}, tokenizer='bpe'))"
    )
    env = {**os.environ, "TINYGPT_HOME": str(isolated_home)}
    child = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
    prepared = isolated_home / "prepared"
    deadline = time.monotonic() + 60
    while not (prepared.exists() and any(prepared.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.05)
    wait_for_cpu_seconds(child, 0.5)  # into the work
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL, "it finished before it could be killed"
    assert not [p for p in prepared.iterdir() if (p / "meta.json").exists()]
    (left,) = list(prepared.iterdir())
    assert left.name.startswith(".tmp-")
    # a later preparation leaves a recent one alone (it may be running) and sweeps an old one
    data.prepare(DataConfig(dataset=str(corpus), tokenizer="byte"))
    assert left.exists()
    os.utime(left, (time.time() - 2 * 24 * 3600,) * 2)
    data.prepare(DataConfig(dataset=str(corpus), tokenizer="char"))
    assert not left.exists()


PEAK_MEMORY_BOUND_MB = 400  # any corpus size; 100 MB read and encoded in one piece needs 1 GB+


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's VmHWM")
@pytest.mark.parametrize("name", ["char", "gpt2"])
def test_a_large_corpus_is_prepared_in_bounded_memory_as_in_one_piece(
    name: str, tmp_path: Path, isolated_home: Path, shakespeare_path: Path, request
) -> None:
    ranks = str(request.getfixturevalue("gpt2_ranks")) if name == "gpt2" else ""
    corpus = tmp_path / "large.txt"
    write_corpus(corpus, shakespeare_path, megabytes=100)
    # the high-water mark of this process' own memory (VmHWM; ru_maxrss would count the
    # memory of the test process it was started from)
    script = (
        "import re\n"
        "from tinygpt.config import DataConfig\nfrom tinygpt.data.corpora import prepare\n"
        f"p = prepare(DataConfig(dataset={str(corpus)!r}, tokenizer={name!r}, "
        f"tokenizer_file={ranks!r}))\n"
        "status = open('/proc/self/status').read()\n"
        "print(p.folder, int(re.search(r'VmHWM:\\s+(\\d+) kB', status)[1]) // 1024)\n"
    )
    env = {**os.environ, "TINYGPT_HOME": str(isolated_home)}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    folder, peak_mb = result.stdout.split()
    assert int(peak_mb) < PEAK_MEMORY_BOUND_MB, f"peak {peak_mb} MB"
    prepared = data.prepare(DataConfig(dataset=str(corpus), tokenizer=name))
    assert str(prepared.folder) == folder
    one_piece = prepared.tokenizer.encode_array(corpus.read_text(encoding="utf-8"))
    assert len(prepared.train) + len(prepared.val) == len(one_piece)
    assert np.array_equal(prepared.train, one_piece[: len(prepared.train)])
    assert np.array_equal(prepared.val, one_piece[len(prepared.train) :])


def test_train_on_a_folder_with_bpe_and_sample_whole_characters(cli, tmp_path: Path) -> None:
    """From a folder of Chinese and English documents to a run whose metrics give bits per
    byte, whose tokenizer is saved with it, and whose samples stream whole characters."""
    folder = tmp_path / "poems"
    folder.mkdir()
    poem = "床前明月光，疑是地上霜。举头望明月，低头思故乡。\n"
    for i in range(6):
        (folder / f"{i}.txt").write_text((poem + f"line {i} of the moon 🌙\n") * 40)
    run_dir = tmp_path / "run"
    code, out, err = cli(
        "train", "--preset", "bigram", "--data", folder, "--data.tokenizer", "bpe",
        "--data.vocab_size", "300", "--steps", "300", "--train.eval_interval", "150",
        "--optim.lr", "0.1",
        "--model.block_size", "16", "--train.sample_tokens", "0", "--out", run_dir,
    )  # fmt: skip
    assert code == 0, err
    assert "bits per byte" in out
    evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in evals if "val_bpb" in r][-1]
    assert 0 < last["val_bpb"] < last["val_loss"] / np.log(2)  # a token holds several bytes
    saved = json.loads((run_dir / "tokenizer.json").read_text())
    assert saved["type"] == "bpe" and saved["tokenizer"]["model"]["type"] == "BPE"
    code, text, _ = cli("sample", run_dir, "--max-new-tokens", "100", "--prompt", "床前")
    assert code == 0 and text.startswith("床前") and "明" in text
    # streamed, a piece at a time, the text is the whole token sequence decoded at once:
    # a character split over tokens is never shown as U+FFFD on the way
    checkpoint = load_checkpoint(run_dir)
    sampling = SampleConfig(max_new_tokens=300, seed=5)
    (streamed,) = sample(checkpoint, "床前", sampling).texts()
    prompt = torch.tensor([checkpoint.tokenizer.encode("床前")])
    tokens = generate(checkpoint.model, prompt, checkpoint.config.model.block_size, sampling)
    assert streamed == "床前" + checkpoint.tokenizer.decode([int(t) for t in tokens])


def test_inspect_shows_any_tokenizer(cli, shakespeare) -> None:
    code, out, err = cli("inspect", "--tokenizer", "bpe")
    assert code == 0, err
    assert "vocab_size = 512" in out and "end of text: 0 = '<|endoftext|>'" in out
    split = re.search(r"'Hello NanoGPT' splits into (\d+) tokens: (\[.*\])", out)
    assert split and int(split[1]) == len(ast.literal_eval(split[2])) < 13
    assert "".join(ast.literal_eval(split[2])) == "Hello NanoGPT"
    compression = re.search(
        r"compression on the corpus: ([\d.]+) characters and ([\d.]+) bytes", out
    )
    assert compression and 1.5 < float(compression[1]) == float(compression[2]) < 3
    sizes = re.search(r"train: ([\d,]+) tokens, val: ([\d,]+) tokens", out)
    train, val = (int(n.replace(",", "")) for n in sizes.groups())
    assert abs((train + val) * float(compression[1]) - 1_115_394) < 0.01 * 1_115_394
    code, out, _ = cli("inspect", "--tokenizer", "byte", "--example", "床")
    assert code == 0 and "encode('床') = [229, 186, 138]" in out
    assert "'Hello NanoGPT' splits into 13 tokens" in out


def test_inspect_shows_the_model_a_run_with_that_tokenizer_builds(cli, shakespeare) -> None:
    code, out, err = cli("inspect", "--preset", "cpu-fast", "--tokenizer", "byte")
    assert code == 0 and "model.ngram 3 is off" in err  # the pair table: char vocabularies only
    assert "parameters" in out and "ngram" not in out
    code, out, err = cli("inspect", "--preset", "cpu-fast")
    assert code == 0 and not err and "ngram (pair table) 278,850" in out  # 66 x 65 rows of 65
    assert "skip 2)" in out and "own 2" not in out  # a part's own tensors by their names
