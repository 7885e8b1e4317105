"""`pvkit` entry point: registers the verbs."""

from __future__ import annotations

import typer

from pvkit.backends.host_heap import use_one_malloc_arena
from pvkit.cli import bench, decode, dtb, plot, run

app = typer.Typer(
    name="pvkit",
    help="A hypervisor built around the paravirtual interface.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command(name="run")(run.run)
app.command(name="decode")(decode.decode)
app.command(name="dtb")(dtb.dtb)
app.command(name="bench")(bench.bench)
app.command(name="plot")(plot.plot)


def main() -> None:
    use_one_malloc_arena()  # before any thread exists: see backends/host_heap.py
    app()
