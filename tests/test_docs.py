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


def _python_blocks() -> list[tuple[str, int, str]]:
    """(file, line, code) of every fenced ``python`` block in the README and docs/."""
    blocks = []
    for path in [README, *PAGES]:
        for match in re.finditer(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M):
            line = path.read_text()[: match.start()].count("\n") + 1
            blocks.append((str(path.relative_to(REPO)), line, match.group(1)))
    return blocks


@pytest.mark.parametrize(("where", "line", "code"), _python_blocks(), ids=lambda value: str(value)[:40])
def test_python_examples_run(where: str, line: int, code: str, tmp_path: Path, monkeypatch, one_thread) -> None:
    """Each example runs as written; checkpoints it names are stood in for by small random models of the same
    input size (VideoMAE-B's 1568 tokens, so r = 150 applies), written where the example reads them."""
    import torch
    import transformers
    from test_motionformer_model import tiny_config, write_official_checkpoint

    from videotome.models import MotionformerForVideoClassification

    small = dict(hidden_size=32, num_hidden_layers=12, num_attention_heads=2, intermediate_size=64)  # flops= as at B

    def videomae(*args, **kwargs):
        return transformers.VideoMAEForVideoClassification(transformers.VideoMAEConfig(**small)).eval()

    monkeypatch.setattr(transformers.VideoMAEForVideoClassification, "from_pretrained", videomae)
    monkeypatch.chdir(tmp_path)
    for name in re.findall(r"from_official\(\"([^\"]+)\"", code):
        write_official_checkpoint(MotionformerForVideoClassification(tiny_config()), tmp_path / name)
    namespace = {"clip": torch.randn(1, 16, 3, 224, 224)}
    exec(compile(code, f"{where}:{line}", "exec"), namespace)  # noqa: S102 - our own documentation


def test_the_flop_claim_of_the_example() -> None:
    """The README's "~2.4x fewer FLOPs" for VideoMAE-B at r = 150, counted on the meta device (no arithmetic)."""
    import torch
    import transformers

    import videotome
    from videotome.bench import count_flops

    claim = float(re.search(r"~([\d.]+)x fewer FLOPs", README.read_text()).group(1))
    with torch.device("meta"):
        model = transformers.VideoMAEForVideoClassification(transformers.VideoMAEConfig(num_labels=400)).eval()
        clip = torch.randn(1, 16, 3, 224, 224)
    unmerged = count_flops(model, clip)
    videotome.patch(model, r=150)
    assert round(unmerged / count_flops(model, clip), 1) == claim


def test_the_module_map_names_every_module():
    text = (REPO / "docs" / "architecture.md").read_text()
    package = REPO / "src" / "videotome"
    missing = [str(path.relative_to(package)) for path in package.rglob("*.py")
               if f"`{path.relative_to(package).as_posix()}`" not in text]
    assert not missing, f"docs/architecture.md does not map {missing}"


def test_the_readme_speed_claim_is_the_measured_range() -> None:
    """The README's "a-b of the zero-cost ideal" is the range of the paper-size models' merged / ideal in
    BENCHMARKS.md's limit table (eager), and its "a-bx the unmerged speed" the testbed models' speedup at batch 1."""
    low, high = map(float, re.search(r"\(([\d.]+)-([\d.]+) of the zero-cost ideal", README.read_text()).groups())
    text = (REPO / "BENCHMARKS.md").read_text()
    section = text[text.index("## Merging against its limit"):]
    section = section[section.index("| model | batch | mode |"):]
    section = section[:section.index("\n\n")]  # the section's first table: the eager limit table
    measured = [float(value) for value in re.findall(r"^\| \w+-base \| 1 \| eager \|(?: [^|]+ \|){3} ([\d.]+) \(",
                                                     section, flags=re.M)]
    assert len(measured) == 4 and (min(measured), max(measured)) == (low, high)
    low, high = map(float, re.search(r"\(([\d.]+)-([\d.]+)x the unmerged speed\)", README.read_text()).groups())
    speedups = [float(value) for value in re.findall(r"^\| [a-z]+ \| 1 \| eager \|(?: [^|]+ \|){2} ([\d.]+)x \|",
                                                     section, flags=re.M)]
    assert len(speedups) == 4 and (min(speedups), max(speedups)) == (low, high)
