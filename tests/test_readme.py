"""The README stays true: CI runs its test command, and its sampling examples do what it
says (its links, shape and other commands: test_docs.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tinygpt.cli import main

from .conftest import REPO


def readme() -> str:
    return (REPO / "README.md").read_text(encoding="utf-8")


def test_ci_runs_the_readme_test_command() -> None:
    commands = re.findall(r"```bash\n(python3 -m venv .*)\n```", readme())
    assert len(commands) == 2, "the quick start has exactly two set-up commands"
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()


def test_the_readme_sampling_examples_do_what_it_says(shakespeare, tmp_path, monkeypatch) -> None:
    """Each `tinygpt sample` line of the README, run by bash as a user would paste it."""
    examples = re.findall(r"^(tinygpt sample runs/fast .*)$", readme(), re.MULTILINE)
    assert len(examples) == 2, examples
    main(
        [
            "train",
            "--preset",
            "bigram",
            "--steps",
            "500",
            "--optim.lr",
            "0.05",
            "--out",
            "runs/fast",
        ]
    )
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def bash(command: str) -> str:
        result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr
        return result.stdout

    # a prompt, 300 new characters at temperature 0.8, seed 7
    romeo = bash(examples[0])
    assert romeo.startswith("ROMEO:") and len(romeo) == len("ROMEO:") + 300 + 1
    # four samples, each ending where its first blank line begins, also written to s.txt
    samples = bash(examples[1])
    texts = samples.rstrip("\n").split("\n---------------\n")
    assert len(texts) == 4 and all(text and "\n\n" not in text for text in texts)
    assert (tmp_path / "s.txt").read_text(encoding="utf-8") == samples
    unstopped = bash(examples[1].replace(' --stop "\\n\\n"', "").replace("s.txt", "t.txt"))
    assert any("\n\n" in text for text in unstopped.split("\n---------------\n"))
