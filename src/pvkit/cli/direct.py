"""The plain command lines of a verb, parsed without the CLI library.

`parse` reads what it is sure to read as the typer command built from the same `Param`s
would, and answers None for everything else — help, a word it does not know, a value
that does not convert, an option given twice, `--`, bundled short flags — so that
typer parses those with its own answers and errors. tests/test_cli_direct.py holds
the two to the same values.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pvkit.cli.params import REQUIRED, Param


def parse(args: Sequence[str], params: Sequence[Param]) -> dict[str, Any] | None:
    """The verb's keyword arguments for `args`, or None: let typer parse them."""
    flags = {
        flag: (p, sets) for p in params if not p.argument for flag, sets in p.spellings().items()
    }
    positional = [p for p in params if p.argument]
    values: dict[str, Any] = {p.name: p.default for p in params}
    given: set[str] = set()
    rest = list(args)
    rest.reverse()
    while rest:
        word = rest.pop()
        if not word.startswith("-"):
            if not positional:
                return None
            p = positional.pop(0)
            value = _convert(p.kind, word)
            if value is None:
                return None
            values[p.name] = value
            continue
        name, eq, inline = word.partition("=")
        found = flags.get(name)
        if found is None or (eq and (found[1] is not None or len(name) == 2)):
            return None  # unknown, `-`, `--`, `--help`, `-sS`, `--flag=x` or `-m=512M`
        p, sets = found
        if p.name in given and not p.multiple:
            return None  # the last one wins in click: rare enough to leave to it
        given.add(p.name)
        if sets is not None:
            values[p.name] = sets
            continue
        if eq:
            raw = inline
        elif rest and not rest[-1].startswith("-"):
            raw = rest.pop()
        else:
            return None  # no value, or one that looks like an option: click's call
        value = _convert(p.kind, raw)
        if value is None:
            return None
        if p.multiple:
            values[p.name] = [*(values[p.name] or ()), value]
        else:
            values[p.name] = value
    if any(p.default is REQUIRED for p in positional):
        return None
    return values


def _convert(kind: type, text: str) -> Any:
    """`text` as click converts it to `kind`, or None where click would refuse it (or
    might: a path that exists but cannot be read)."""
    if kind is str:
        return text
    if kind is Path:
        if os.path.exists(text) and not os.access(text, os.R_OK):
            return None
        return Path(text)
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            return None
    raise TypeError(f"no direct conversion to {kind.__name__}")
