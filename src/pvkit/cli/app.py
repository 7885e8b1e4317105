"""`pvkit` entry point: registers the verbs and gives every error one style.

Every error is one line on stderr that starts with `pvkit: ` and is never wrapped (so it
greps): the verbs' own (`options.fail`) and the option parser's alike. Help is rich on a
terminal and plain, at full width, when stdout is a pipe or a file.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated

import typer

from pvkit import __version__
from pvkit.backends.host_heap import use_one_malloc_arena
from pvkit.cli import (
    bench,
    decode,
    dtb,
    fuzz,
    fw,
    header,
    monitor,
    plot,
    restore,
    run,
    sdk,
    services,
    snapshot,
)

HELP = "A hypervisor built around the paravirtual interface."
PLAIN_HELP_WIDTH = 120  # plain help is wrapped here, not at the 80 columns of a pipe


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


def build_app(rich_help: bool = True) -> typer.Typer:
    """The command tree; `rich_help=False` gives plain help text (for pipes and files)."""
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
    app.command(name="run")(run.run)
    app.command(name="decode")(decode.decode)
    app.command(name="dtb")(dtb.dtb)
    app.command(name="bench")(bench.bench)
    app.command(name="plot")(plot.plot)
    app.command(name="services")(services.services)
    app.command(name="header")(header.header)
    app.command(name="sdk")(sdk.sdk)
    app.command(name="fuzz")(fuzz.fuzz)
    app.command(name="fw")(fw.fw)
    app.command(name="restore")(restore.restore)
    app.command(name="monitor")(monitor.monitor)
    app.add_typer(snapshot.app, name="snapshot")
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
    use_one_malloc_arena()  # before any thread exists: see backends/host_heap.py
    args = list(sys.argv[1:] if argv is None else argv) or ["--help"]
    app = build_app(rich_help=sys.stdout.isatty())
    try:
        status = app(args=args, prog_name="pvkit", standalone_mode=False)
    except typer.TyperException as exc:  # bad options, missing arguments, unknown verbs
        typer.echo(one_line(exc), err=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("pvkit: aborted", err=True)
        sys.exit(1)
    sys.exit(status if isinstance(status, int) else 0)
