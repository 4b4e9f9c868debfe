"""The README stays true: CI runs its test command, and its file tree lists every file."""

from __future__ import annotations

import re
import subprocess

from .conftest import REPO


def readme() -> str:
    return (REPO / "README.md").read_text(encoding="utf-8")


def test_ci_runs_the_readme_test_command() -> None:
    commands = re.findall(r"```bash\n(python3 -m venv .*)\n```", readme())
    assert len(commands) == 2, "the quick start has exactly two set-up commands"
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()


def test_file_tree_lists_every_tracked_file() -> None:
    tree = readme().split("## Files", 1)[1].split("```")[1]
    listed = set(re.findall(r"^(\S+)\s{2,}\S", tree, re.MULTILINE))
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert set(tracked) <= listed, f"missing from the README: {set(tracked) - listed}"
    assert all((REPO / path).exists() for path in listed), "the README lists a file that is gone"
