"""The typer command tree: help, the parser's errors, and every verb without a direct
parser (cli/direct.py reads the plain `run` and `restore` lines without it)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Annotated, Any

import typer

from pvkit import __version__
from pvkit.cli.typed import typer_command

HELP = "A hypervisor built around the paravirtual interface."
PLAIN_HELP_WIDTH = 120  # plain help is wrapped here, not at the 80 columns of a pipe
GROUPS = ("snapshot",)  # verbs with verbs of their own (`pvkit snapshot info`)


def _verb(name: str) -> Callable[..., Any]:
    """The verb's function (under pvkit.cli.NAME, of the same name); one that declares
    its parameters as `PARAMS` gets its typer signature from them."""
    module = importlib.import_module(f"pvkit.cli.{name}")
    function: Callable[..., Any] = getattr(module, name)
    params = getattr(module, "PARAMS", None)
    return function if params is None else typer_command(function, params)


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


def build_app(rich_help: bool, verbs: Iterable[str]) -> typer.Typer:
    """The command tree with `verbs`; `rich_help=False` gives plain help text (for
    pipes and files)."""
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
        if name in GROUPS:
            group: typer.Typer = importlib.import_module(f"pvkit.cli.{name}").app
            app.add_typer(group, name=name)
        else:
            app.command(name=name)(_verb(name))
    return app


def parse_and_run(args: list[str], rich_help: bool, verbs: Iterable[str]) -> int:
    """Run the verb `args` name through typer; the exit status."""
    app = build_app(rich_help, verbs)
    try:
        status = app(args=args, prog_name="pvkit", standalone_mode=False)
    except typer.TyperException as exc:  # bad options, missing arguments, unknown verbs
        typer.echo(one_line(exc), err=True)
        return exc.exit_code
    except typer.Abort:
        typer.echo("pvkit: aborted", err=True)
        return 1
    return status if isinstance(status, int) else 0


def one_line(exc: typer.TyperException) -> str:
    """The parser's error as one `pvkit:` sentence that names where help is."""
    text = " ".join(exc.format_message().split()).rstrip(".")
    if text[:1].isupper() and text[1:2].islower():
        text = text[0].lower() + text[1:]
    ctx = getattr(exc, "ctx", None)  # usage errors know their command
    if ctx is not None:
        text += f"; see '{ctx.command_path} --help'"
    return f"pvkit: {text}"
