#!/usr/bin/env python3
"""Run the documented ``videotome`` commands that need no external data, at small settings.

The fenced shell blocks (```bash, ```sh, ```shell) of README.md and docs/*.md are read in that order (README first,
then the pages by name). Every line that starts with ``videotome `` (after joining ``\\`` continuations and dropping
``#`` comments) is either run or skipped by one of the rules in :func:`decide`, which prints its reason. A command
that runs gets small settings (:data:`SMALL`: fewer clips, steps, repeats; see the table), runs with ``bash`` in one
temporary working directory shared by all the pages, in order, so a page may prepare its inputs with an earlier
command (``videotome testbed generate --out clips`` before ``videotome eval ... --root clips``). Paths starting with
``src/`` (the packaged testbed checkpoints, as the docs write them from the repository root) are made absolute.
Assignments (``NAME=value`` lines) in a block are kept in front of that block's later commands.

The check fails (exit 1) naming the file, line and command when a command exits non-zero, when a command has no
rule, or when one of the main user paths (:data:`REQUIRED`) ran nowhere, so a documented path cannot silently fall
into a skip rule. ``--list`` prints the decisions without running anything; ``--keep`` keeps the working directory.

    python .ci/docs_check.py [--list] [--keep]
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHELL_LANGUAGES = ("bash", "sh", "shell")
#: where the docs point at the packaged testbed checkpoints (from the repository root)
TESTBED_CHECKPOINTS = "src/videotome/testbed/checkpoints/"
#: built-in ``videotome bench`` models: real base-size networks at 224 pixels
BUILTIN_BENCH_MODELS = ("videomae-base", "vivit-base", "timesformer-base", "motionformer-base", "dinov2-small")
#: the small settings each command runs with: flag -> value (None: a switch), replacing the documented value
SMALL: dict[str, dict[str, str | None]] = {
    "demo": {"--limit": "8", "--batch-size": "8", "--timing-clips": "8", "--repeats": "1", "--no-progress": None},
    "testbed generate": {"--count": "8"},
    "testbed train": {"--steps": "2", "--batch-size": "4", "--warmup": "1", "--eval-clips": "8", "--save-every": "1"},
    "eval": {"--limit": "8", "--batch-size": "8", "--workers": "0", "--device": "cpu", "--no-progress": None},
    "sweep": {"--limit": "8", "--batch-size": "8", "--workers": "0", "--device": "cpu", "--no-progress": None},
    "report": {},
    "confusion": {},
    "bench": {"--repeats": "1", "--warmup": "0", "--device": "cpu"},
    "tune": {"--repeats": "1", "--warmup": "0", "--points": "2", "--device": "cpu"},
    "vtm train": {
        "--epochs": "1", "--warmup-epochs": "0", "--max-steps-per-epoch": "2", "--batch-size": "8",
        "--synthetic-videos": "32", "--synthetic-eval-videos": "16",
    },
    "vtm eval": {},
    "finetune": {"--epochs": "1", "--batch-size": "8", "--workers": "0", "--no-progress": None},
    "visualize": {"--no-progress": None},
    "vlm bench": {"--repeats": "1", "--warmup": "0", "--device": "cpu"},
    "vtm bench": {"--repeats": "1", "--warmup": "0", "--shape": "12 16 64", "--windows": "2 6 12", "--device": "cpu"},
}
#: the main user paths: each must run at least once somewhere in the docs
REQUIRED = tuple(SMALL)
TIMEOUT_S = 300


def tiny_vlms() -> tuple[str, ...]:
    """The built-in tiny video-LLMs ``videotome vlm bench`` runs without downloads."""
    from videotome.vlm.tiny import TINY_MODELS

    return tuple(TINY_MODELS)


@dataclass
class Command:
    """One documented shell command: where it is, its text, and the assignments before it in its block."""

    path: Path
    line: int
    text: str
    prelude: tuple[str, ...] = ()

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def doc_files(repo: Path = REPO) -> list[Path]:
    """README.md, then every docs/*.md by name."""
    return [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]


def fenced_blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """Every fenced code block: (language, line number of its first line, its lines)."""
    blocks, language, start, lines = [], None, 0, []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if language is None and stripped.startswith("```"):
            language, start, lines = stripped[3:].strip().lower(), number + 1, []
        elif language is not None and stripped.startswith("```"):
            blocks.append((language, start, lines))
            language = None
        elif language is not None:
            lines.append(line)
    return blocks


def strip_comment(line: str) -> str:
    """A shell line without its trailing ``# comment`` (a ``#`` at the start or after a space, outside quotes)."""
    quote = None
    for index, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index].rstrip()
    return line.rstrip()


def logical_lines(lines: list[str], first: int) -> list[tuple[int, str]]:
    """Lines with ``\\`` continuations joined and comments dropped: (line number, text); blank ones left out."""
    joined, pending, start = [], "", first
    for number, raw in enumerate(lines, first):
        line = strip_comment(raw)
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        text = (pending + line.strip()).strip()
        pending = ""
        if text:
            joined.append((start, text))
    return joined


def shell_lines(path: Path) -> list[list[tuple[int, str]]]:
    """The logical lines of each fenced shell block of one file."""
    return [
        logical_lines(lines, start)
        for language, start, lines in fenced_blocks(path.read_text())
        if language in SHELL_LANGUAGES
    ]


ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def documented_commands(files: list[Path] | None = None) -> list[Command]:
    """Every shell line of the docs that is not an assignment, with its block's earlier assignments."""
    commands = []
    for path in files or doc_files():
        for block in shell_lines(path):
            prelude: list[str] = []
            for line, text in block:
                if ASSIGNMENT.match(text):
                    prelude.append(text)
                else:
                    commands.append(Command(path, line, text, tuple(prelude)))
    return commands


def command_words(tokens: list[str], parser: argparse.ArgumentParser) -> tuple[str, argparse.ArgumentParser, int]:
    """The sub-command path after ``tokens[0]`` (``"vtm train"``), its parser, and the index of the first token
    after it; ("", parser, 1) when the first word names no command."""
    words, index = [], 1
    while True:
        groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not groups or index >= len(tokens) or tokens[index] not in groups[0].choices:
            return " ".join(words), parser, index
        parser = groups[0].choices[tokens[index]]
        words.append(tokens[index])
        index += 1


def split_words(text: str) -> list[str]:
    """Shell words of a line (plain whitespace split where shlex cannot parse it, e.g. a synopsis)."""
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


def set_flag(tokens: list[str], flag: str, value: str | None) -> list[str]:
    """``tokens`` with ``flag`` (and the values after it, or ``flag=value``) replaced by ``flag value``."""
    out, index = [], 0
    while index < len(tokens):
        token = tokens[index]
        if token == flag:
            index += 1
            while index < len(tokens) and not tokens[index].startswith("-"):
                index += 1
            continue
        if not token.startswith(f"{flag}="):
            out.append(token)
        index += 1
    return out + ([flag] if value is None else [flag, *value.split()])


def option(tokens: list[str], flag: str) -> list[str]:
    """The values given to ``flag`` (those after it up to the next flag), [] when absent."""
    for index, token in enumerate(tokens):
        if token.startswith(f"{flag}="):
            return [token.split("=", 1)[1]]
        if token == flag:
            values = []
            for value in tokens[index + 1 :]:
                if value.startswith("-"):
                    break
                values.append(value)
            return values
    return []


def decide(command: Command, parser: argparse.ArgumentParser, workdir: Path) -> tuple[str, str]:
    """("run", command words) or ("skip", reason) for one documented line; ("fail", reason) when no rule fits."""
    text = command.text
    if text.startswith("torchrun "):
        return "skip", "torchrun: several processes; tests/test_torchrun.py runs eval, sweep and vtm train under it"
    if not text.startswith("videotome "):
        return "ignore", "not a videotome command"
    if "..." in text or re.search(r"[\[\]{}<>|]", text):
        return "skip", "a synopsis with placeholders, not a command"
    tokens = split_words(text)
    words, _, _ = command_words(tokens, parser)
    if words not in SMALL and words not in ("features extract", "vlm generate"):
        return "fail", f"no rule in .ci/docs_check.py for `videotome {words}`"
    if any(value.startswith("cuda") for value in option(tokens, "--device")):
        return "skip", "needs a GPU"
    if words == "features extract":
        return "skip", "needs an image backbone checkpoint and a directory of videos"
    if words == "vlm generate":
        return "skip", "needs a local video-LLM directory with real weights (tests/test_vlm_commands.py runs a tiny one)"
    if words == "demo" and "--full" in tokens:
        return "skip", "--full: the same code as the default demo over many more settings; too long for CI"
    if words in ("eval", "sweep"):
        if option(tokens, "--config"):
            return "skip", "a TOML grid over downloaded checkpoints and datasets"
        models = option(tokens, "--model" if words == "eval" else "--models")
        if not models or not all(model.startswith(TESTBED_CHECKPOINTS) for model in models):
            return "skip", "needs downloaded checkpoints and datasets (only the packaged testbed checkpoints run)"
    if words in ("bench", "tune"):
        model = (option(tokens, "--model") or [""])[0]
        if model in BUILTIN_BENCH_MODELS:
            return "skip", "a built-in base-size model at 224 pixels: over a minute on 2 CPU cores (tests/test_bench.py)"
        if not model.startswith(TESTBED_CHECKPOINTS):
            return "skip", "needs a local checkpoint directory"
    if words == "vlm bench" and (option(tokens, "--model") or [""])[0] not in tiny_vlms():
        return "skip", "needs a local video-LLM directory (only the built-in tiny models run)"
    if words == "visualize":
        model, video = (option(tokens, "--model") or [""])[0], (option(tokens, "--video") or [""])[0]
        if not model.startswith(("testbed:", TESTBED_CHECKPOINTS)):
            return "skip", "needs a local checkpoint directory (only the packaged testbed models run)"
        if not glob.glob(str(workdir / video)):
            return "skip", "needs a video that no earlier documented command writes"
    if words == "finetune" and not (option(tokens, "--model") or [""])[0].startswith(("testbed:", TESTBED_CHECKPOINTS)):
        return "skip", "needs a downloaded checkpoint and dataset (EPIC-KITCHENS-100)"
    if words == "vtm train" and (option(tokens, "--dataset") or ["synthetic"])[0] != "synthetic":
        return "skip", "needs LVU / Breakfast / COIN features"
    if words == "vtm eval" and not (workdir / option(tokens, "--checkpoint")[0]).exists():
        return "skip", "the checkpoint of a run that needs LVU / Breakfast / COIN features"
    if words in ("report", "confusion"):
        _, _, start = command_words(tokens, parser)
        values = {value for flag in tokens[start:] if flag.startswith("--") for value in option(tokens, flag)}
        inputs = [t for t in tokens[start:] if not t.startswith("-") and t not in values]
        if not all(glob.glob(str(workdir / name)) for name in inputs):
            return "skip", "reads the results of runs that need real data"
    return "run", words


def small(command: Command, words: str) -> str:
    """The command at small settings, with ``src/`` paths made absolute, as one shell line (globs and variables
    left to the shell)."""
    tokens = split_words(command.text)
    for flag, value in SMALL[words].items():
        tokens = set_flag(tokens, flag, value)
    tokens = [str(REPO / token) if token.startswith("src/") else token for token in tokens]
    return " ".join(token if re.fullmatch(r"[\w@%+=:,./*?$-]+", token) else shlex.quote(token) for token in tokens)


def shims(directory: Path) -> dict[str, str]:
    """The environment the commands run in: ``videotome`` and ``python`` are this interpreter, on this checkout."""
    directory.mkdir()
    (directory / "videotome").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m videotome "$@"\n')
    (directory / "videotome").chmod(0o755)
    (directory / "python").symlink_to(sys.executable)
    env = dict(os.environ)
    env["PATH"] = f"{directory}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    return env


def main(argv: list[str] | None = None) -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--list", action="store_true", help="print what would run or be skipped, run nothing")
    args.add_argument("--keep", action="store_true", help="keep the working directory")
    options = args.parse_args(argv)
    sys.path.insert(0, str(REPO / "src"))
    from videotome.cli import build_parser

    parser = build_parser()
    workdir = Path(tempfile.mkdtemp(prefix="videotome-docs-"))
    env = shims(workdir / ".bin")
    done: set[str] = set()
    ran: dict[str, int] = {}
    began = time.monotonic()
    for command in documented_commands():
        verdict, detail = decide(command, parser, workdir)
        if verdict == "ignore":
            continue
        if verdict == "fail":
            print(f"docs check failed: {command.where}: {command.text}\n  {detail}")
            return 1
        if verdict == "skip":
            print(f"skip {command.where}: {command.text}\n  why: {detail}")
            continue
        line = small(command, detail)
        if line in done:
            print(f"skip {command.where}: {command.text}\n  why: the same command already ran above")
            continue
        done.add(line)
        print(f"run  {command.where}: {command.text}\n  as: {line}", flush=True)
        if options.list:
            ran[detail] = ran.get(detail, 0) + 1
            continue
        start = time.monotonic()
        script = "\n".join([*command.prelude, line])
        try:
            result = subprocess.run(["bash", "-c", script], cwd=workdir, env=env, capture_output=True, text=True,
                                    timeout=TIMEOUT_S)
            status = result.returncode
            output = (result.stdout + result.stderr)[-3000:]
        except subprocess.TimeoutExpired:
            status, output = "timeout", f"ran past {TIMEOUT_S} s"
        print(f"  {time.monotonic() - start:.1f} s", flush=True)
        if status != 0:
            print(output)
            print(f"docs check failed: {command.where}: {command.text}\n  exit status {status} (in {workdir})")
            return 1
        ran[detail] = ran.get(detail, 0) + 1
    missing = [words for words in REQUIRED if not ran.get(words)]
    if missing and not options.list:
        print(f"docs check failed: no runnable documented command for: {', '.join(missing)}")
        return 1
    print(f"docs check passed: {sum(ran.values())} commands in {time.monotonic() - began:.0f} s")
    if options.keep:
        print(f"working directory: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
