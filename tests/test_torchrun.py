"""Every command's flags survive torchrun's own parser, which reads abbreviations of its options anywhere in argv.

``torchrun ... -m videotome eval --r 4`` stopped before anything ran: torchrun read ``--r`` as an ambiguous
abbreviation of its ``--rdzv-*``, ``--role``, ``--run-path`` and ``--redirects``. Each command's flags are checked
against torchrun's real parser; the runs under torchrun with every flag are in the end-to-end tests.
"""

from __future__ import annotations

import argparse

import pytest
from conftest import SINGLE_PROCESS_ALIASES, command_parsers
from torch.distributed.run import get_args_parser


def _flags() -> list[tuple[str, str, bool]]:
    """(command, flag, whether it is a single-process alias) for every option of every command."""
    found = []
    for name, command in command_parsers().items():
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for flag in action.option_strings:
                found.append((name, flag, flag in SINGLE_PROCESS_ALIASES))
    return found


FLAGS = _flags()


@pytest.mark.parametrize(("command", "flag"), [(c, f) for c, f, alias in FLAGS if not alias])
def test_torchrun_passes_every_flag_to_the_command(command, flag):
    argv = ["--nproc-per-node", "2", "--standalone", "-m", "videotome", *command.split(), flag, "1"]
    try:
        parsed = get_args_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"torchrun refuses `videotome {command} {flag}` (an abbreviation of one of its own options)")
    assert parsed.training_script_args == [*command.split(), flag, "1"]


def test_the_single_process_aliases_are_the_paper_spelling_only():
    assert SINGLE_PROCESS_ALIASES == {"--r"}
    assert all(any(f == "--reduce" for c2, f, _ in FLAGS if c2 == c) for c, f, alias in FLAGS if alias)
