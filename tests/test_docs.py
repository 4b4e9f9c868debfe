"""The front door and the docs stay true: the README's shape, the Chinese front door's
match, every link and anchor, the code map against the tree, and every command shown parses
(test_docs_commands.py runs those of docs/)."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tinygpt.cli import build_parser, config_overrides, default_preset, main
from tinygpt.config import resolve

from .conftest import REPO

README, README_ZH = REPO / "README.md", REPO / "README.zh.md"
DOC_PAGES = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, README_ZH, *DOC_PAGES, REPO / "benchmarks" / "RESULTS.md"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def without_code(text: str) -> str:
    """The text outside fenced code blocks (where brackets are code, not links)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces to -."""
    found = set()
    for heading in re.findall(r"^#+ (.+)$", without_code(read(path)), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


def test_the_readme_is_a_short_front_door_with_the_lecture_map_first() -> None:
    lines = read(README).splitlines()
    assert len(lines) <= 250
    first_screen = "\n".join(lines[:60])
    assert "## Coming from the lecture" in first_screen
    assert "`--preset lecture-notebook`" in first_screen  # the map's last step, too
    linked = {Path(target.split("#")[0]).name for target in LINK.findall(read(README))}
    assert {page.name for page in DOC_PAGES} <= linked, "a docs/ page the README does not link"


def test_the_chinese_front_door_matches_the_english_one() -> None:
    english, chinese = read(README), read(README_ZH)
    assert "README.zh.md" in english.split("\n## ", 1)[0]  # linked from the top
    # what it is (above the sections), then: two commands, the lecture map, where to go next
    assert len(re.findall(r"^## ", chinese, re.MULTILINE)) == 3
    commands = re.compile(r"```bash\n(.*?)```", re.DOTALL)
    assert commands.findall(chinese) == commands.findall(english)[: len(commands.findall(chinese))]
    map_rows = re.compile(r"^\|[^|]*\| (`[^|]*`) \|", re.MULTILINE)
    assert map_rows.findall(chinese) == map_rows.findall(english.split("## The command line")[0])
    docs_linked = re.compile(r"\]\((docs/[^)#]+)")
    assert set(docs_linked.findall(chinese)) == set(docs_linked.findall(english))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_link_and_anchor_resolves(page: Path) -> None:
    broken = []
    for target in LINK.findall(without_code(read(page))):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: outside the project
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists() or (anchor and path.suffix == ".md" and anchor not in anchors(path)):
            broken.append(target)
    assert not broken, f"{page.name}: {broken}"


def test_the_code_map_lists_every_file_and_nothing_that_is_gone() -> None:
    text = read(REPO / "docs" / "code-map.md")
    listed, fence = set(), None  # fence: the open block's language, "" for a plain one
    for line in text.splitlines():
        if line.startswith("```"):
            fence = line[3:] if fence is None else None
        elif fence == "" and (match := re.match(r"(\S+)\s{2,}\S", line)):
            listed.add(match.group(1))
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    folders = tuple(entry for entry in listed if entry.endswith("/"))
    missing = {f for f in tracked if f not in listed and not f.startswith(folders)}
    assert not missing, f"missing from docs/code-map.md: {missing}"
    assert all((REPO / path).exists() for path in listed), "the code map lists what is gone"
    modules = {f for f in tracked if f.startswith("src/") and f.endswith(".py")}
    assert modules <= listed, "every module has its own line"


def shown_commands() -> list[tuple[str, str]]:
    """(page, command) for every `tinygpt ...` command in the bash blocks of the front doors
    and docs/, with continuation lines joined and `&&` chains split."""
    found = []
    for page in [README, README_ZH, *DOC_PAGES]:
        for block in re.findall(r"```bash\n(.*?)```", read(page), re.DOTALL):
            for line in block.replace("\\\n", " ").splitlines():
                for part in line.split("&&"):
                    words = shlex.split(part, comments=True)
                    if words[:1] == ["tinygpt"] or words[:1] == [".venv/bin/tinygpt"]:
                        found.append((page.name, shlex.join(words[1:])))
    return found


def test_every_command_shown_is_one_the_command_line_accepts() -> None:
    """Each command parses, with no unknown option; a new training's preset and options
    resolve into a valid config (the walkthroughs and the README's sampling examples run
    theirs for real: test_walkthrough.py, test_readme.py)."""
    commands = shown_commands()
    assert len(commands) >= 40
    parser = build_parser()
    for page, command in commands:
        argv = shlex.split(command)
        args, unknown = parser.parse_known_args(argv)
        assert not unknown, (page, command, unknown)
        fresh_run = args.command == "train" and not (args.resume or args.config)
        if fresh_run and not any(a.startswith("--init-from") for a in argv):
            resolve(args.preset or default_preset(), None, config_overrides(args))


CHEAP = ("inspect", "trick")  # print and exit: run every one shown, for real


def test_the_cheap_commands_shown_run(shakespeare, capsys) -> None:
    ran = 0
    for page, command in shown_commands():
        argv = shlex.split(command)
        if argv[0] in CHEAP and "--data" not in argv:
            main(argv)
            assert capsys.readouterr().out, (page, command)
            ran += 1
    assert ran >= 4
