"""`pvkit` entry point: registers the verbs and gives every error one style.

Every error is one line on stderr that starts with `pvkit: ` and is never wrapped (so it
greps): the verbs' own (`options.fail`) and the option parser's alike. Help is rich on a
terminal and plain, at full width, when stdout is a pipe or a file.

Each verb's module is imported only when that verb runs (or when a help page or an
unknown verb needs them all): `pvkit run` of an arm64 guest must not pay for the bench,
the x86 board or the plotting libraries (start-up is part of every boot). For the same
reason a `pvkit run` process ends without the interpreter's teardown (`_leave`).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Annotated, Any

import typer

from pvkit import __version__
from pvkit.backends.host_heap import use_one_malloc_arena

HELP = "A hypervisor built around the paravirtual interface."
PLAIN_HELP_WIDTH = 120  # plain help is wrapped here, not at the 80 columns of a pipe
# verb -> the module (under pvkit.cli) whose function of the same name implements it
VERBS = (
    "run", "decode", "dtb", "bench", "plot", "services", "header", "sdk", "fuzz", "fw",
    "restore", "monitor", "snapshot",
)  # fmt: skip
GROUPS = ("snapshot",)


def _verb(name: str) -> Callable[..., Any]:
    function: Callable[..., Any] = getattr(importlib.import_module(f"pvkit.cli.{name}"), name)
    return function


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"pvkit {__version__}")
        raise typer.Exit()


def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    pass


def build_app(rich_help: bool = True, verbs: Iterable[str] = VERBS) -> typer.Typer:
    """The command tree; `rich_help=False` gives plain help text (for pipes and files);
    `verbs` are the ones registered (all by default)."""
    width = {"terminal_width": PLAIN_HELP_WIDTH, "max_content_width": PLAIN_HELP_WIDTH}
    settings = {} if rich_help else width
    app = typer.Typer(
        name="pvkit",
        help=HELP,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode="rich" if rich_help else None,
        context_settings=settings,
    )
    app.callback()(_root)
    for name in verbs:
        if name in GROUPS:  # a verb with verbs of its own (`pvkit snapshot info`)
            group: typer.Typer = importlib.import_module(f"pvkit.cli.{name}").app
            app.add_typer(group, name=name)
        else:
            app.command(name=name)(_verb(name))
    return app


def one_line(exc: typer.TyperException) -> str:
    """The parser's error as one `pvkit:` sentence that names where help is."""
    text = " ".join(exc.format_message().split()).rstrip(".")
    if text[:1].isupper() and text[1:2].islower():
        text = text[0].lower() + text[1:]
    ctx = getattr(exc, "ctx", None)  # usage errors know their command
    if ctx is not None:
        text += f"; see '{ctx.command_path} --help'"
    return f"pvkit: {text}"


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
    # The verb alone when the first word names one; every verb for help, --version or
    # a word that is no verb (the parser's error then lists them all).
    verbs = args[:1] if args[0] in VERBS else VERBS
    app = build_app(rich_help=sys.stdout.isatty(), verbs=verbs)
    try:
        status = app(args=args, prog_name="pvkit", standalone_mode=False)
    except typer.TyperException as exc:  # bad options, missing arguments, unknown verbs
        typer.echo(one_line(exc), err=True)
        return exc.exit_code
    except typer.Abort:
        typer.echo("pvkit: aborted", err=True)
        return 1
    return status if isinstance(status, int) else 0
