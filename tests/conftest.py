"""Shared fixtures: an isolated cache for every test, and tiny shakespeare placed in it.

The tests never download anything but the corpus, and that only when no copy is found: the
copy named by TINYGPT_TEST_CORPUS, the one beside the repository (shared/data/...), the
user's tinygpt cache (after `tinygpt data tinyshakespeare`), and only then a download into
that cache, checksum verified. Without any of them the run stops at once with one message.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors.torch
import torch

from tinygpt import cpus
from tinygpt.cli import main
from tinygpt.config import RunConfig
from tinygpt.data import corpora as data
from tinygpt.errors import UserError
from tinygpt.rundir import RunDir, list_checkpoints

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))  # tests import the benchmarks' own helpers
BESIDE_REPO = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
HOW_TO_PROVIDE = (
    "run `tinygpt data tinyshakespeare --from PATH/input.txt` once, "
    "or set TINYGPT_TEST_CORPUS=PATH/input.txt"
)


def find_test_corpus() -> Path:
    """A verified local copy of tiny shakespeare; pytest.exit with one message if none."""
    corpus = data.CORPORA["tinyshakespeare"]
    explicit = os.environ.get("TINYGPT_TEST_CORPUS")
    if explicit:
        if not Path(explicit).is_file():
            pytest.exit(f"TINYGPT_TEST_CORPUS={explicit} is not a file; {HOW_TO_PROVIDE}", 2)
        return Path(explicit)
    for candidate in (BESIDE_REPO, data.corpus_cache_path(corpus)):
        if candidate.is_file() and data.sha256_of(candidate) == corpus.sha256:
            return candidate
    try:
        return data.download(corpus)
    except UserError:
        pytest.exit(
            f"tiny shakespeare is not beside the repository ({BESIDE_REPO}) nor in the tinygpt "
            f"cache, and it could not be downloaded: {HOW_TO_PROVIDE}",
            2,
        )


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[CORPUS_KEY] = find_test_corpus()


CORPUS_KEY = pytest.StashKey[Path]()


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets an empty cache and runs in its own working directory, and its runs
    one thread count: a run left to choose takes the CPUs free at its start, and two runs
    compared bit for bit must not differ because the machine was busier for one of them
    (test_one_writer covers the choice itself)."""
    home = tmp_path / "home"
    monkeypatch.setenv("TINYGPT_HOME", str(home))
    monkeypatch.setenv(cpus.THREADS_VARIABLE, str(cpus.usable_cpus()))
    monkeypatch.chdir(tmp_path)
    return home


@pytest.fixture(scope="session")
def shakespeare_path(request: pytest.FixtureRequest) -> Path:
    """The local copy of tiny shakespeare that the tests read (never written to)."""
    return request.config.stash[CORPUS_KEY]


@pytest.fixture(scope="session")
def shakespeare_home(tmp_path_factory: pytest.TempPathFactory, shakespeare_path: Path) -> Path:
    home = tmp_path_factory.mktemp("shakespeare-home")
    target = home / "corpora" / "tinyshakespeare" / "input.txt"
    target.parent.mkdir(parents=True)
    shutil.copyfile(shakespeare_path, target)
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


def tinygpt(*args: object) -> list[str]:
    """The command line of `tinygpt ARGS...` run as a child process."""
    return [sys.executable, "-m", "tinygpt", *(str(a) for a in args)]


def torchrun_env(**env: str) -> dict[str, str]:
    """The environment less the tests' thread count: torchrun gives each rank one thread."""
    return {**{k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}, **env}


def wait_until(
    condition: Callable[[], bool], process: subprocess.Popen, what: str, timeout: float = 60
) -> None:
    """Poll for an observable event (a file, a line) while `process` runs; fail if it ends
    first or the event does not come within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        assert process.poll() is None, f"the process ended before {what}"
        time.sleep(0.02)
    raise AssertionError(f"no {what} within {timeout} s")


# --- one tiny GPT for the tests that train: a few seconds of CPU ------------------------

# Its thread count is pinned: left to choose, each run takes the CPUs that other work leaves
# free at its start, and two runs that must agree bit for bit would split their sums apart
# when the machine's load changes between them.
TINY: dict[str, dict[str, object]] = {
    "model": {"arch": "gpt", "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 32,
              "dropout": 0.1},  # dropout on: an exact resume must restore the RNG too
    "optim": {"lr": 3e-3, "warmup_steps": 5, "schedule": "cosine", "min_lr": 3e-4},
    "train": {"steps": 40, "batch_size": 4, "eval_interval": 10, "eval_batches": 2,
              "log_interval": 5, "sample_tokens": 0, "threads": 2},
}  # fmt: skip


def tiny_values(
    model: dict | None = None, optim: dict | None = None, data: dict | None = None, **train: object
) -> dict[str, dict[str, object]]:
    """TINY with some of its values changed, section by section (`train` as keywords)."""
    values = {
        "model": {**TINY["model"], **(model or {})},
        "optim": {**TINY["optim"], **(optim or {})},
        "train": {**TINY["train"], **train},
    }
    if data:
        values["data"] = data
    return values


def tiny_config(
    model: dict | None = None, optim: dict | None = None, data: dict | None = None, **train: object
) -> RunConfig:
    return RunConfig.from_dict(tiny_values(model, optim, data, **train))


def tiny_config_file(
    path: Path, model: dict | None = None, optim: dict | None = None, **train: object
) -> Path:
    """The tiny config as a TOML file for `tinygpt train --config`."""
    lines = []
    for section, values in tiny_values(model, optim, **train).items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def newest_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    (newest,) = list_checkpoints(run_dir)[-1:]
    return safetensors.torch.load_file(newest / "model.safetensors")


def assert_same_weights(run_a: Path, run_b: Path) -> None:
    """The newest checkpoints of two runs hold the same tensors, bit for bit."""
    a, b = newest_weights(run_a), newest_weights(run_b)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def metrics(run_dir: Path) -> list[dict]:
    """The lines of a run's metrics.jsonl."""
    return [json.loads(line) for line in RunDir(run_dir).metrics.open(encoding="utf-8")]


def wait_for_cpu_seconds(process: subprocess.Popen, seconds: float) -> None:
    """Wait until `process` has worked `seconds` more of CPU time (/proc/PID/stat): it is
    into what it was doing, however busy the machine."""

    def used() -> float:
        fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # user + system

    start = used()
    wait_until(lambda: used() >= start + seconds, process, f"{seconds} s of CPU time")


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


GPT2_RANKS_BESIDE_REPO = REPO.parent / "shared" / "data" / "gpt2" / "gpt2.tiktoken"


@pytest.fixture(scope="session")
def gpt2_ranks() -> Path:
    """GPT-2's ranks file (TINYGPT_TEST_GPT2_RANKS, or beside the repository); the tests
    that need it are skipped without it: tinygpt never downloads it."""
    path = Path(os.environ.get("TINYGPT_TEST_GPT2_RANKS") or GPT2_RANKS_BESIDE_REPO)
    if not path.is_file():
        pytest.skip(f"GPT-2's ranks file is not at {path} (set TINYGPT_TEST_GPT2_RANKS)")
    return path
