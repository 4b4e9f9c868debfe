"""Every command the front doors (README.md, README.zh.md) and the docs/ pages show runs,
the way a reader pastes it (the walkthroughs have their own test: test_walkthrough.py; the
set-up commands are what CI itself runs, .ci/run).

A command runs as written, in a folder of its own (`tinygpt` commands in this process, as
`main`; servers, torchrun and --nproc as processes of their own; a benchmark at the
repository's root, with --help, as its runs take minutes), with three kinds of change:
trainings are cut to a few small steps (`shrunk`); the docs' placeholders (a path to GPT-2,
a Downloads folder, a run's dated name, a second machine) get stand-ins; the servers listen
on a free port; a new training may overwrite a run folder of another page's. A command
shown twice runs once (a server: once per page). A page's commands run in its order,
after the docs' first run (`tinygpt train --out runs/fast`, training.md).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import tinygpt.models.gpt as gpt
from tinygpt.cli import main
from tinygpt.rundir import RunDir

from .conftest import REPO, wait_until
from .test_hf import gpt2_shaped_folder

DOCS = [
    REPO / "README.md",
    REPO / "README.zh.md",
    *sorted(p for p in (REPO / "docs").glob("*.md") if not p.name.startswith("walkthrough")),
]
FIRST_PAGE = REPO / "docs" / "training.md"  # its first command makes runs/fast, which the rest use

# a training in a few seconds: its options, whatever the preset; --steps is cut to these
SMALL_TRAINING = [
    "--train.batch_size", "4", "--train.eval_interval", "2", "--train.eval_batches", "2",
    "--train.sample_tokens", "0", "--train.whole_val_tokens", "2000", "--train.time_limit", "0",
]  # fmt: skip
FRESH_STEPS, MORE_STEPS = 4, 2  # a resume goes MORE_STEPS past where its run is
PROCESSES = 2  # for the pages' 4 and 8 on a machine of two cores


def page_commands(page: Path) -> Iterator[str]:
    """The shell commands of a page's bash blocks: continuation lines joined, `&&` chains
    split, comments dropped."""
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(encoding="utf-8"), re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                if words := shlex.split(part, comments=True):
                    yield shlex.join(words)


def with_value(words: list[str], option: str, value: object) -> list[str]:
    if option not in words:
        return [*words, option, str(value)]
    at = words.index(option) + 1
    return [*words[:at], str(value), *words[at + 1 :]]


def shrunk(words: list[str], folder: Path) -> list[str]:
    """A `tinygpt train` command cut to a few small steps; other commands as they are."""
    tinygpt = words.index("tinygpt") if "tinygpt" in words else -1
    if tinygpt < 0 or words[tinygpt + 1 : tinygpt + 2] != ["train"]:
        return words
    if "--nproc" in words:
        words = with_value(words, "--nproc", PROCESSES)
    if "--resume" in words:
        run = RunDir(folder / words[words.index("--resume") + 1])
        done = json.loads(run.metrics.read_text(encoding="utf-8").splitlines()[-1])["step"]
        return with_value(words, "--steps", done + MORE_STEPS)
    # --overwrite: each page as if read alone (two pages may name the same run folder)
    return [*with_value(words, "--steps", FRESH_STEPS), *SMALL_TRAINING, "--overwrite"]


class Reader:
    """Runs a page's commands in one folder, as a reader at a shell would."""

    def __init__(self, folder: Path, gpt2_ranks: Path | None) -> None:
        self.folder = folder
        bin_dir = Path(sys.executable).parent
        self.env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
        self.env.pop("OMP_NUM_THREADS", None)  # torchrun gives each process its own
        self.server: subprocess.Popen | None = None
        self.port = 0
        self.ran: set[str] = set()
        self.took: dict[str, float] = {}  # seconds per command, shown with -s
        self.stand_ins = {"runs/cpu-fast-20261126-101500": "runs/fast"}
        if gpt2_ranks is not None:
            self.stand_ins["~/Downloads/gpt2.tiktoken"] = str(gpt2_ranks)
            # GPT-2 itself: a small model of its family as transformers saves it
            gpt2_shaped_folder(folder / "stand-ins" / "gpt2", gpt2_ranks, n_positions=256)
            self.stand_ins["path/to/gpt2"] = "stand-ins/gpt2"

    def run(self, command: str) -> str:
        """Run one command; its output, or the reason it did not run here."""
        started = time.monotonic()
        try:
            return self._run(command)
        finally:
            self.took[command] = time.monotonic() - started

    def _run(self, command: str) -> str:
        for placeholder, stand_in in self.stand_ins.items():
            command = command.replace(placeholder, stand_in)
        words = shlex.split(command)
        if command in self.ran and "serve" not in words:  # a page's server ends with it
            return "shown again: ran above"
        self.ran.add(command)
        if words[:3] == ["python3", "-m", "venv"] or "torch==2.13.0" in words:
            return "skipped: the set-up, which CI runs (.ci/run)"
        if words[0] == ".venv/bin/python" and "pytest" in words:
            return "skipped: this test suite itself"
        if words[0] == ".venv/bin/tinygpt":
            words[0] = "tinygpt"
        if {"~/Downloads/gpt2.tiktoken", "path/to/gpt2", "runs/gpt2"} & set(words):
            return "skipped: GPT-2's ranks file is not here"
        if "HOST:29500" in words:
            return "skipped: a second machine (the one-machine torchrun line above runs)"
        if words[0] == "torchrun":
            words[words.index("--nproc-per-node") + 1] = str(PROCESSES)
        if words[:2] == ["tinygpt", "serve"]:
            return self.serve(words)
        if words[0] == "curl":
            words = [w.replace(":8000", f":{self.port}") for w in words]
        if words[0].endswith("pip") and words[1:3] == ["install", "-e"]:
            return self.check_extra(words[3])
        if words[0] == "python" and words[1].startswith("benchmarks/"):
            words = [*words, "--help"]  # a benchmark takes minutes: its options are read
        if words[0] == "python":
            words[0] = sys.executable
        return self.shell(shrunk(words, self.folder))

    def shell(self, words: list[str]) -> str:
        if words[0] == "tinygpt" and words[1] != "serve" and "--nproc" not in words:
            return self.in_process(words)
        at_root = words[0] == sys.executable and words[1].startswith("benchmarks/")
        result = subprocess.run(
            words, cwd=REPO if at_root else self.folder, env=self.env, capture_output=True,
            text=True, timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, f"{shlex.join(words)}\n{result.stderr[-2000:]}"
        return result.stdout

    def in_process(self, words: list[str]) -> str:
        """A `tinygpt` command run as `main` in this process, in the reader's folder and
        cache: what a new interpreter would do, without its seconds of start-up."""
        out, err = io.StringIO(), io.StringIO()
        home = os.environ.get("TINYGPT_HOME")
        os.environ["TINYGPT_HOME"] = self.env["TINYGPT_HOME"]
        try:
            with (
                contextlib.chdir(self.folder),
                contextlib.redirect_stdout(out),
                contextlib.redirect_stderr(err),
            ):
                main(words[1:])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            if home is None:
                del os.environ["TINYGPT_HOME"]
            else:
                os.environ["TINYGPT_HOME"] = home
        assert code == 0, f"{shlex.join(words)}\n{err.getvalue()[-2000:]}"
        return out.getvalue()

    def serve(self, words: list[str]) -> str:
        self.stop_serving()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = subprocess.Popen(
            [*words, "--port", str(self.port)], cwd=self.folder, env=self.env,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        wait_until(self.healthy, self.server, "a healthy server", timeout=120)
        return "serving"

    def healthy(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/health").status_code == 200
        except httpx.TransportError:
            return False

    def stop_serving(self) -> None:
        if self.server is not None:
            self.server.send_signal(signal.SIGINT)
            self.server.wait(timeout=30)
            self.server = None

    @staticmethod
    def check_extra(target: str) -> str:
        extra = re.fullmatch(r"\.\[(\w+)\]", target)
        assert extra is not None, target
        pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
        assert extra.group(1) in pyproject["project"]["optional-dependencies"], target
        return "an extra of this project (the test environment has it)"


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory, shakespeare_home: Path) -> Iterator[Reader]:
    folder = tmp_path_factory.mktemp("reader")
    ranks = REPO.parent / "shared" / "data" / "gpt2" / "gpt2.tiktoken"
    env_ranks = os.environ.get("TINYGPT_TEST_GPT2_RANKS")
    gpt2_ranks = Path(env_ranks) if env_ranks else ranks
    reader = Reader(folder, gpt2_ranks if gpt2_ranks.is_file() else None)
    reader.env["TINYGPT_HOME"] = str(shakespeare_home)
    corpus = (shakespeare_home / "corpora" / "tinyshakespeare" / "input.txt").read_text()
    (folder / "my.txt").write_text(corpus[:60_000], encoding="utf-8")
    (folder / "notes.txt").write_text(corpus[-20_000:], encoding="utf-8")
    (folder / "my_books").mkdir()
    for i in range(2):
        (folder / "my_books" / f"book{i}.txt").write_text(corpus[i * 200_000 :][:200_000])
    first = next(page_commands(FIRST_PAGE))
    assert first == "tinygpt train --out runs/fast"
    reader.run(first)
    yield reader
    reader.stop_serving()


@pytest.mark.slow
@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_every_command_of_the_page_runs(reader: Reader, page: Path) -> None:
    commands = list(page_commands(page))
    if page == FIRST_PAGE:
        commands = commands[1:]  # its first made runs/fast
    try:
        outputs = [reader.run(command) for command in commands]
    finally:
        reader.stop_serving()
    for command in sorted(commands, key=lambda c: -reader.took.get(c, 0))[:3]:
        print(f"{reader.took.get(command, 0):6.1f} s  {command}")
    for command, output in zip(commands, outputs, strict=True):
        if command.startswith(("tinygpt eval", "curl")):
            assert output.strip(), command
    if page.name == "code-map.md":
        assert outputs == [f"{gpt.__doc__.splitlines()[0]}\n"]  # type: ignore[union-attr]


def test_every_page_but_the_walkthroughs_has_commands_to_run() -> None:
    assert all(list(page_commands(page)) for page in DOCS)
    assert DOCS[0].name == "README.md" and len(DOCS) >= 12
    assert {"docs/training.md", "docs/serving.md", "docs/distributed.md"} <= {
        page.relative_to(REPO).as_posix() for page in DOCS
    }
