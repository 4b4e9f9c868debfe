"""The walkthroughs stay true: every command they show runs, and every ✅ line holds.

A ✅ line after a command block is its pass criterion (the Chinese page writes `检查` for
`check:`): `✅ check: "TEXT"` means the block's output contains TEXT; `✅ check: NAME ≈ X ± T`
means the last number printed after NAME lies within T of X.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import REPO

DOCS = [REPO / "docs" / "walkthrough.md", REPO / "docs" / "walkthrough.zh.md"]
CHECK = re.compile(r"^✅ (?:check: |检查：)(.+)$")
NUMBER = re.compile(r"^(.+?) ≈ (-?[\d.]+) ± ([\d.]+)$")


@dataclass
class Block:
    doc: str
    commands: list[str]
    checks: list[str] = field(default_factory=list)


def blocks(path: Path) -> list[Block]:
    """The ```bash blocks of a page, each with the ✅ lines that follow it."""
    found: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            end = lines.index("```", i + 1)
            found.append(Block(path.name, [c for c in lines[i + 1 : end] if c.strip()]))
            i = end
        elif (match := CHECK.match(lines[i])) and found:
            found[-1].checks.append(match.group(1).strip())
        i += 1
    return found


def holds(check: str, output: str) -> str | None:
    """None if the check holds on the output, else what went wrong."""
    if check.startswith('"'):
        text = check.strip('"')
        return None if text in output else f"{text!r} not in the output"
    match = NUMBER.match(check)
    if match is None:
        return f"cannot read the check {check!r}"
    name, expected, tolerance = match.group(1), float(match.group(2)), float(match.group(3))
    values = re.findall(rf"{re.escape(name)} (-?\d+\.\d+)", output)
    if not values:
        return f"no {name!r} in the output"
    if abs(float(values[-1]) - expected) > tolerance:
        return f"{name} {values[-1]}, not within {tolerance} of {expected}"
    return None


def test_both_pages_show_the_same_commands_and_checks() -> None:
    english, chinese = (blocks(path) for path in DOCS)
    assert [b.commands for b in english] == [b.commands for b in chinese]
    assert [b.checks for b in english] == [b.checks for b in chinese]
    assert sum(len(b.checks) for b in english) >= 15


@pytest.mark.slow
def test_every_command_runs_and_every_check_holds(shakespeare, tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    shutil.copy(REPO / "docs" / "walkthrough-zh-text.txt", tmp_path / "docs")
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}

    def run(command: str, threads: str | None = None) -> str:
        extra = {"OMP_NUM_THREADS": threads} if threads else {}
        result = subprocess.run(
            ["bash", "-c", command], capture_output=True, text=True, env={**env, **extra},
            cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == 0, f"{command}\n{result.stderr}"
        return result.stdout + result.stderr

    commands = list(dict.fromkeys(c for path in DOCS for b in blocks(path) for c in b.commands))
    # the new trainings depend on nothing before them: two at a time, a thread each (the
    # lecture's small models gain little from a second thread), the last and longest first
    fresh = [c for c in commands if c.startswith("tinygpt train ") and "--resume" not in c]
    outputs: dict[str, str] = {}
    failures = []
    with ThreadPoolExecutor(2) as pool:
        trainings = {c: pool.submit(run, c, "1") for c in reversed(fresh)}
        for block in (b for path in DOCS for b in blocks(path)):
            for command in block.commands:
                if command not in outputs:
                    done = trainings.get(command)
                    outputs[command] = done.result() if done else run(command)
            output = "".join(outputs[c] for c in block.commands)
            for check in block.checks:
                if (problem := holds(check, output)) is not None:
                    failures.append(f"{block.doc}: {block.commands[0]}: {problem}")
    assert not failures, "\n".join(failures)
