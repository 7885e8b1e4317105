"""A verb declared in `cli/params.py` as the typer command its parameters describe."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer

from pvkit.cli.params import REQUIRED, Param


def typer_command(verb: Callable[..., Any], params: Sequence[Param]) -> Callable[..., Any]:
    """`verb` with a signature typer reads: each parameter annotated with its
    typer.Option (or Argument) and its help, in declaration order."""

    @functools.wraps(verb)
    def command(**values: Any) -> Any:
        return verb(**values)

    parameters = [
        inspect.Parameter(
            p.name,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=inspect.Parameter.empty if p.default is REQUIRED else p.default,
            annotation=Annotated[p.annotation, _typer_info(p)],
        )
        for p in params
    ]
    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    del command.__wrapped__  # typer must read the signature above, not the verb's
    return command


def _typer_info(p: Param) -> Any:
    if p.argument:
        return typer.Argument(help=p.help)
    return typer.Option(*p.flags, help=p.help)
