"""Command-line options made from configuration dataclasses, and the ``--threads`` option every command has.

A command's flags come from the fields of the dataclass it runs on (:func:`add_options`), and the parsed
arguments go back into that dataclass (:func:`from_args`): the dataclass holds each option's name, type, default,
choices and help once. Field metadata refines a flag: ``help``; ``choices``; ``parse`` (text to value, raising
``ValueError`` with a message naming the value); ``flag`` and ``aliases`` (other spellings); ``metavar``;
``cli=False`` (no flag); :func:`option` writes such a field in one call. A field whose type is itself a dataclass
adds that dataclass's flags as a group.

This module sits below ``cli`` and every command module, so none of them imports another.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any

Parser = argparse.ArgumentParser | argparse._ArgumentGroup


def typed(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type`` from a parser that raises ``ValueError``: argparse then shows our message, not its own
    "invalid value" text."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def _number(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None

    parse.__name__ = kind.__name__
    return parse


def positive_int(text: str) -> int:
    """An integer of at least 1, refused with the value named."""
    value = _number(int)(text)
    if value < 1:
        raise ValueError(f"expected an integer >= 1, got {text!r}")
    return value


def _base_type(hint: Any) -> Any:
    """``X`` of ``X | None``; the hint itself otherwise."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        members = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return members[0] if len(members) == 1 else str
    return hint


def _element_type(hint: Any) -> Any | None:
    """``X`` of ``tuple[X, ...]`` or ``list[X]`` (a flag taking several values); None for other hints."""
    if typing.get_origin(hint) in (tuple, list):
        return typing.get_args(hint)[0]
    return None


def _fields(cls: type) -> Iterator[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        if item.metadata.get("cli", True):
            yield item, _base_type(hints[item.name])


def option(default: Any = dataclasses.MISSING, help: str = "", **metadata: Any) -> Any:
    """A dataclass field that is a flag: its default (none: a required flag), its help and any other metadata key
    of this module (``choices``, ``flag``, ...)."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


#: the help of every command's ``--device`` flag
DEVICE_HELP = "cpu, cuda or cuda:N (default: cuda when available)"


def device_option() -> Any:
    """The ``device`` field of a command's configuration: None lets the command take CUDA when it is there."""
    return option(None, DEVICE_HELP)


def check_at_least(config: object, minimum: int, *names: str) -> None:
    """Refuse any field of ``config`` in ``names`` below ``minimum``, naming it and its value; None (unset)
    passes."""
    for name in names:
        value = getattr(config, name)
        if value is not None and value < minimum:
            raise ValueError(f"{name}={value} must be at least {minimum}")


def flag_of(item: dataclasses.Field) -> str:
    """The flag of a field: its ``flag`` metadata, or ``--`` and its name with dashes."""
    return item.metadata.get("flag", "--" + item.name.replace("_", "-"))


def add_options(
    parser: Parser, cls: type, *, many: bool = False, exclude: tuple[str, ...] = (), required: bool = True
) -> None:
    """Add one flag per field of the dataclass ``cls`` (``many``: each takes one or more values, for grids).

    Flags are left out of the parsed arguments unless given (the dataclass's own defaults then apply), and a
    field without a default is a required flag unless ``required`` is False (values that may come from elsewhere,
    such as a sweep's TOML file).
    """
    for item, kind in _fields(cls):
        if item.name in exclude:
            continue
        if dataclasses.is_dataclass(kind):
            title = item.metadata.get("help", item.name)
            group = parser.add_argument_group(title) if isinstance(parser, argparse.ArgumentParser) else parser
            add_options(group, kind, many=many, exclude=exclude, required=required)
            continue
        has_default = item.default is not dataclasses.MISSING or item.default_factory is not dataclasses.MISSING
        default = item.default if item.default is not dataclasses.MISSING else None
        help_text = item.metadata.get("help", "")
        if has_default and default is not None and not isinstance(default, bool):
            help_text += f" (default: {default})"
        spec: dict[str, Any] = {"dest": item.name, "default": argparse.SUPPRESS, "help": help_text}
        parse = item.metadata.get("parse")
        element = _element_type(kind)
        if element is not None:
            kind = element
            spec["nargs"] = "+"
        if kind is bool and parse is None and not many:
            spec["action"] = "store_false" if default else "store_true"
        else:
            choices = item.metadata.get("choices")
            if parse is None and choices is not None:
                spec["choices"] = choices
            else:
                spec["type"] = typed(parse or (_number(kind) if kind in (int, float) else kind))
                if choices is not None:
                    spec["metavar"] = "{" + ",".join(map(str, choices)) + "}"
            if "metavar" in item.metadata:
                spec["metavar"] = item.metadata["metavar"]
            if many:
                spec["nargs"] = "+"
        if required and not has_default:
            spec["required"] = True
        parser.add_argument(flag_of(item), *item.metadata.get("aliases", ()), **spec)


def given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` that the command line set; a nested dataclass's as a dict of its own."""
    values: dict[str, Any] = {}
    for item, kind in _fields(cls):
        if dataclasses.is_dataclass(kind):
            values[item.name] = given(args, kind)
        elif hasattr(args, item.name):
            value = getattr(args, item.name)
            values[item.name] = tuple(value) if isinstance(value, list) and _element_type(kind) else value
    return values


def build(cls: type, values: dict[str, Any]) -> Any:
    """An instance of the dataclass ``cls`` from :func:`given`'s values (nested dicts become their dataclasses);
    fields not in ``values`` keep their defaults."""
    kinds = {item.name: kind for item, kind in _fields(cls)}
    return cls(**{
        name: build(kinds[name], value) if name in kinds and dataclasses.is_dataclass(kinds[name]) else value
        for name, value in values.items()
    })


def from_args(cls: type, args: argparse.Namespace) -> Any:
    """An instance of the dataclass ``cls`` from parsed arguments: the given flags, else its defaults."""
    return build(cls, given(args, cls))


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """``--threads``: CPU threads for torch; 1 avoids the slowdown of oversubscribing a shared machine."""
    parser.add_argument(
        "--threads", type=typed(positive_int), default=None, help="torch CPU threads (default: torch's choice)"
    )


def apply_threads(threads: int | None) -> None:
    """Set torch's CPU thread count when ``--threads`` was given (None leaves torch's choice)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
