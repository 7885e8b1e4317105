"""`--service package.module:Class` and `--forward ...=module:function` for the verbs."""

from __future__ import annotations

from collections.abc import Iterable

from pvkit.cli.options import fail
from pvkit.services.base import Service
from pvkit.services.plugins import PluginError, load_service


def load_services(specs: Iterable[str]) -> list[Service]:
    """One new instance per `--service`; a spec that cannot be used is one sentence, exit 2."""
    out = []
    for spec in specs:
        try:
            out.append(load_service(spec))
        except PluginError as exc:
            raise fail(f"--service {exc}") from None
    return out
