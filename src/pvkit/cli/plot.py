"""`pvkit plot FILE.json -o steal.png`: per-vCPU run/steal/idle bars and steal over time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from pvkit.cli.options import fail


def _load(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise fail(f"{path} is not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(document, dict) or not isinstance(document.get("traceEvents"), list):
        raise fail(f"{path} is not a trace-event file written by pvkit run --timeline")
    vcpus = document.get("otherData", {}).get("vcpus")
    if not isinstance(vcpus, list):
        raise fail(f"{path} has no per-vCPU totals (otherData.vcpus): not a pvkit timeline")
    return document


def plot(
    timeline: Annotated[Path, typer.Argument(help="a file from pvkit run --timeline")],
    output: Annotated[Path, typer.Option("-o", "--output", help="PNG to write")] = Path(
        "steal.png"
    ),
) -> None:
    """Draw per-vCPU run/steal/idle totals and each vCPU's stolen time over time."""
    document = _load(timeline)
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    totals = document["otherData"]["vcpus"]
    names = [f"vCPU {i}" for i in range(len(totals))]
    fig, (bars, lines) = plt.subplots(1, 2, figsize=(12, 4.5))
    left = [0.0] * len(totals)
    for key, colour in (("run_ns", "tab:green"), ("steal_ns", "tab:red"), ("idle_ns", "tab:gray")):
        values = [t[key] / 1e6 for t in totals]
        bars.barh(names, values, left=left, color=colour, label=key.removesuffix("_ns"))
        left = [a + b for a, b in zip(left, values, strict=True)]
    bars.set_xlabel("ms")
    bars.set_title("run / steal / idle per vCPU")
    bars.legend()
    for i in range(len(totals)):
        points = sorted(
            (e["ts"] / 1000, e["args"]["steal_ms"])
            for e in document["traceEvents"]
            if e.get("ph") == "C" and e.get("name") == f"steal vCPU {i}"
        )
        if points:
            lines.step([p[0] for p in points], [p[1] for p in points], where="post", label=names[i])
    lines.set_xlabel("time (ms)")
    lines.set_ylabel("stolen (ms)")
    lines.set_title("stolen time")
    lines.legend()
    fig.tight_layout()
    tmp = output.with_name(output.name + ".tmp.png")
    try:
        fig.savefig(tmp, dpi=100)
        tmp.replace(output)
    except OSError as exc:
        raise fail(f"cannot write {output}: {exc.strerror}") from None
    finally:
        plt.close(fig)
    typer.echo(f"pvkit: wrote {output}")
