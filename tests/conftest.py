"""Shared fixtures: an isolated cache for every test, and tiny shakespeare placed in it.

Nothing here touches the network: the corpus is copied from a local file, by default the
copy that sits beside the repository (override with TINYGPT_TEST_CORPUS).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tinygpt.cli import main

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = Path(
    os.environ.get(
        "TINYGPT_TEST_CORPUS", REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
    )
)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets an empty cache and runs in its own working directory."""
    home = tmp_path / "home"
    monkeypatch.setenv("TINYGPT_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    return home


@pytest.fixture(scope="session")
def shakespeare_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not SHAKESPEARE.is_file():
        pytest.fail(f"tiny shakespeare not found at {SHAKESPEARE}; set TINYGPT_TEST_CORPUS")
    home = tmp_path_factory.mktemp("shakespeare-home")
    target = home / "corpora" / "tinyshakespeare" / "input.txt"
    target.parent.mkdir(parents=True)
    shutil.copyfile(SHAKESPEARE, target)
    return home


@pytest.fixture
def shakespeare(shakespeare_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The cache holds tiny shakespeare, as after `tinygpt data tinyshakespeare`."""
    monkeypatch.setenv("TINYGPT_HOME", str(shakespeare_home))
    return shakespeare_home


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run `tinygpt ARGS...` in process: (exit status, stdout, stderr)."""

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            main([str(a) for a in argv])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def text_file(tmp_path: Path) -> Callable[[str], Path]:
    """Write a small UTF-8 corpus and return its path."""

    def write(text: str, name: str = "corpus.txt") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


SHORT = (
    "--preset",
    "bigram",
    "--steps",
    "60",
    "--train.eval_interval",
    "20",
    "--train.eval_batches",
    "4",
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, shakespeare_home: Path) -> Path:
    """A short bigram run, shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("runs") / "short"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TINYGPT_HOME", str(shakespeare_home))
        main(["train", *SHORT, "--optim.lr", "0.05", "--out", str(out)])
    return out
