"""`pvkit` entry point: picks the verb and gives every error one style.

Every error is one line on stderr that starts with `pvkit: ` and is never wrapped (so it
greps): the verbs' own (`options.fail`) and the option parser's alike. Help is rich on a
terminal and plain, at full width, when stdout is a pipe or a file.

Start-up is part of every boot, so a plain `pvkit run` (or `restore`) line is parsed by
cli/direct.py and imports no CLI library; anything else goes to the typer tree
(cli/tree.py). Each verb's module is imported only when that verb runs (or when a help
page or an unknown verb needs them all), and a `pvkit run` process ends without the
interpreter's teardown (`_leave`).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import sys
from collections.abc import Sequence

from pvkit.backends.host_heap import use_one_malloc_arena
from pvkit.cli.options import VerbExit, say

VERBS = (
    "run", "decode", "dtb", "bench", "plot", "services", "header", "sdk", "fuzz", "fw",
    "restore", "monitor", "snapshot",
)  # fmt: skip
DIRECT = ("run", "restore")  # the verbs whose plain lines cli/direct.py parses


def main(argv: Sequence[str] | None = None) -> None:
    """The `pvkit` command (`argv` None: this process's own arguments)."""
    code = _status(argv)
    if argv is None and sys.argv[1:2] == ["run"]:
        _leave(code)
    sys.exit(code)


def _leave(code: int) -> None:
    """End this process now: after a run nothing is left to do but the interpreter's
    teardown, which frees every engine and module one by one (about 20 ms, an eighth of
    smp-hello's whole boot). The trace and timeline files are closed and the terminal is
    restored by then; the exit handlers still run and the output is flushed."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nobody reads it
            stream.flush()
    os._exit(code)


def _status(argv: Sequence[str] | None) -> int:
    use_one_malloc_arena()  # before any thread exists: see backends/host_heap.py
    args = list(sys.argv[1:] if argv is None else argv) or ["--help"]
    try:
        if args[0] in DIRECT:
            from pvkit.cli.direct import parse

            module = importlib.import_module(f"pvkit.cli.{args[0]}")
            values = parse(args[1:], module.PARAMS)
            if values is not None:
                return _ran(getattr(module, args[0])(**values))
        from pvkit.cli.tree import parse_and_run

        # The verb alone when the first word names one; every verb for help, --version
        # or a word that is no verb (the parser's error then lists them all).
        verbs = args[:1] if args[0] in VERBS else VERBS
        return parse_and_run(args, sys.stdout.isatty(), verbs)
    except VerbExit as exc:
        return exc.code
    except KeyboardInterrupt:  # as click answers one during a verb
        say("\npvkit: aborted")
        return 1


def _ran(status: object) -> int:
    return status if isinstance(status, int) else 0
