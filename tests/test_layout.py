"""The layout shows the architecture: every module says its job on its first line, and the
parts of the package import one another in one direction only (no cycles between them)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import tinygpt

PACKAGE = Path(tinygpt.__file__).parent


def modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(("tinygpt", *path.relative_to(PACKAGE).with_suffix("").parts))
        found[name.removesuffix(".__init__")] = ast.parse(path.read_text(encoding="utf-8"))
    return found


def part_of(module: str) -> str:
    """A module's part of the package: its top-level module or sub-package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "tinygpt"


def imported(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.startswith("tinygpt.")}


def test_every_module_says_its_job_on_its_first_line() -> None:
    for name, tree in modules().items():
        docstring = ast.get_docstring(tree)
        assert docstring and docstring.splitlines()[0].strip(), f"{name} has no docstring"


def test_the_parts_import_one_another_in_one_direction() -> None:
    edges: dict[str, set[str]] = defaultdict(set)
    for name, tree in modules().items():
        for target in imported(tree):
            if part_of(target) != part_of(name):
                edges[part_of(name)].add(part_of(target))

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in edges[start]:
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cycles = sorted(part for part in list(edges) if reaches(part, part, {part}))
    assert not cycles, f"these parts import each other in a circle: {cycles}"


def test_models_know_nothing_of_training_sampling_or_the_command_line() -> None:
    for name, tree in modules().items():
        if part_of(name) in ("models", "tokenizers", "config"):
            upward = {t for t in imported(tree) if part_of(t) in ("training", "cli", "serve")}
            assert not upward, f"{name} imports {upward}"


def test_hf_checks_a_folder_without_the_training_stack() -> None:
    tree = modules()
    assert not any(part_of(t) == "training" for t in imported(tree["tinygpt.hf"]))
    assert "tinygpt.rundir" in imported(tree["tinygpt.checkpoint"])
