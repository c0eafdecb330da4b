"""The docs stay true: a short README, links that resolve, every page linked, and only flags the commands have.

The fenced-block reading is shared with ``.ci/docs_check.py``, which runs the documented commands; these tests only
read the files and build the parser (no model runs).
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

from videotome.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = sorted((REPO / "docs").glob("*.md"))
MAX_README_LINES = 220
#: a Markdown link or image: [text](target) / ![alt](target)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _docs_check():
    spec = importlib.util.spec_from_file_location("docs_check", REPO / ".ci" / "docs_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


docs_check = _docs_check()


def _relative_links(path: Path) -> list[str]:
    """The link targets of a Markdown file that are not URLs, e-mail addresses or in-page anchors."""
    targets = LINK.findall(path.read_text())
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def test_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move detail into docs/ (at most {MAX_README_LINES})"


def test_there_are_docs_pages():
    assert PAGES, "docs/*.md is empty"


@pytest.mark.parametrize("path", [README, *PAGES], ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_point_at_files(path):
    broken = []
    for target in _relative_links(path):
        file = target.split("#", 1)[0]
        if not (path.parent / file).exists():
            broken.append(target)
    assert not broken, f"{path.relative_to(REPO)} links to missing files: {broken}"


def test_every_page_is_linked_from_the_readme():
    linked = {(REPO / target.split("#", 1)[0]).resolve() for target in _relative_links(README)}
    unlinked = [str(page.relative_to(REPO)) for page in PAGES if page.resolve() not in linked]
    assert not unlinked, f"README.md does not link to {unlinked}"


def _documented_flags() -> list[tuple[str, str, str]]:
    """(where, command words, flag) for every long flag after a ``videotome COMMAND`` in a fenced shell block."""
    parser = build_parser()
    found = []
    for command in docs_check.documented_commands([README, *PAGES]):
        words = docs_check.split_words(command.text)
        if "videotome" not in words:
            continue
        tokens = words[words.index("videotome") :]
        path, _, start = docs_check.command_words(tokens, parser)
        for flag in FLAG.findall(" ".join(tokens[start:])):
            found.append((command.where, path, flag))
    return found


def _flags_of(parser) -> dict[str, set[str]]:
    """Every runnable command's path ("vtm train") and its option strings."""
    flags = {}

    def walk(parser, words):
        groups = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
        if not groups:
            flags[" ".join(words)] = set(parser._option_string_actions)
        for group in groups:
            for name, child in group.choices.items():
                walk(child, [*words, name])

    walk(parser, [])
    return flags


def test_documented_flags_exist():
    flags = _flags_of(build_parser())
    documented = _documented_flags()
    assert documented, "no videotome command with flags found in the docs"
    unknown = [f"{where}: videotome {path} {flag}" for where, path, flag in documented
               if path not in flags or flag not in flags[path]]
    assert not unknown, "flags the commands do not have:\n" + "\n".join(unknown)


def test_every_documented_command_names_a_command():
    flags = _flags_of(build_parser())
    nameless = [command.where for command in docs_check.documented_commands([README, *PAGES])
                if command.text.startswith("videotome ")
                and docs_check.command_words(docs_check.split_words(command.text), build_parser())[0] not in flags]
    assert not nameless, f"videotome lines that name no command: {nameless}"


def test_the_docs_check_sets_only_real_flags():
    flags = _flags_of(build_parser())
    wrong = [f"videotome {words} {flag}" for words, settings in docs_check.SMALL.items() for flag in settings
             if flag not in flags.get(words, set())]
    assert not wrong, f".ci/docs_check.py sets flags the commands do not have: {wrong}"


def test_the_docs_check_reads_continuations_and_comments():
    lines = docs_check.logical_lines(["videotome eval --model m \\", "    --out r.jsonl   # a comment", ""], 10)
    assert lines == [(10, "videotome eval --model m --out r.jsonl")]
    assert docs_check.set_flag(["videotome", "bench", "--repeats", "5", "--json"], "--repeats", "1") == [
        "videotome", "bench", "--json", "--repeats", "1"]


def test_committed_pictures_are_small():
    pictures = list((REPO / "docs").rglob("*.png"))
    assert pictures, "the README shows a picture from docs/"
    assert all(path.stat().st_size < 300_000 for path in pictures), [path.name for path in pictures]
