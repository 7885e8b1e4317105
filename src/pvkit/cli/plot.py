"""`pvkit plot FILE.json -o steal.png`: per-vCPU run/steal/idle bars and steal over time.

The file is read defensively: anything but a timeline `pvkit run --timeline` wrote is one
sentence and exit 2. The figure is titled with the run's parameters (clock, vCPUs, host
CPUs, slice), its legends sit below the axes, never over a bar, and stolen time is drawn
from 0.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pvkit.cli.options import fail

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_TOTALS = ("run_ns", "steal_ns", "idle_ns")
_COLOURS = {"run_ns": "tab:green", "steal_ns": "tab:red", "idle_ns": "tab:gray"}


@dataclass(frozen=True, slots=True)
class Timeline:
    totals: list[dict[str, float]]  # per vCPU: run_ns, steal_ns, idle_ns
    steal: list[list[tuple[float, float]]]  # per vCPU: (ms, stolen ms) points, in time order
    title: str


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def load(path: Path) -> Timeline:
    """The parts of a timeline file the plot draws; `fail` (exit 2) for anything else."""
    try:
        document = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise fail(f"{path} is not a text file: give a file from pvkit run --timeline") from None
    except json.JSONDecodeError as exc:
        raise fail(f"{path} is not JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise fail(f"{path} nests too deeply to be a pvkit timeline") from None
    if not isinstance(document, dict) or not isinstance(document.get("traceEvents"), list):
        raise fail(f"{path} is not a trace-event file written by pvkit run --timeline")
    other = document.get("otherData")
    vcpus = other.get("vcpus") if isinstance(other, dict) else None
    if not isinstance(vcpus, list) or not vcpus:
        raise fail(f"{path} has no per-vCPU totals (otherData.vcpus): not a pvkit timeline")
    totals = []
    for i, entry in enumerate(vcpus):
        if not isinstance(entry, dict) or not all(
            _number(entry.get(k)) and entry[k] >= 0 for k in _TOTALS
        ):
            raise fail(f"{path}: otherData.vcpus[{i}] lacks run_ns, steal_ns and idle_ns")
        totals.append({k: float(entry[k]) for k in _TOTALS})
    assert isinstance(other, dict)
    return Timeline(totals, _steal_points(document["traceEvents"], len(totals)), _title(other))


def _steal_points(events: list[Any], vcpus: int) -> list[list[tuple[float, float]]]:
    """Each vCPU's steal counter; events that are not well-formed counters are skipped."""
    names = {f"steal vCPU {i}": i for i in range(vcpus)}
    points: list[list[tuple[float, float]]] = [[] for _ in range(vcpus)]
    for e in events:
        if not isinstance(e, dict) or e.get("ph") != "C":
            continue
        i = names.get(e.get("name"))  # type: ignore[arg-type]
        args = e.get("args")
        if i is None or not _number(e.get("ts")) or not isinstance(args, dict):
            continue
        if _number(args.get("steal_ms")):
            points[i].append((e["ts"] / 1000, float(args["steal_ms"])))
    return [sorted(p) for p in points]


def _title(other: dict[str, Any]) -> str:
    clock = other.get("clock")
    host_cpus = other.get("host_cpus")
    slice_ns = other.get("slice_ns")
    vcpus = len(other["vcpus"])
    parts = [f"{vcpus} vCPU(s)"]
    if _number(host_cpus):
        parts.append(f"{host_cpus} host CPU(s)")
    if isinstance(clock, str) and clock:
        parts.append(f"{clock} clock")
    if isinstance(slice_ns, int | float) and _number(slice_ns):
        parts.append(f"{slice_ns / 1e6:g} ms slices")
    return "pvkit run: " + ", ".join(parts)


def draw(timeline: Timeline) -> Figure:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    names = [f"vCPU {i}" for i in range(len(timeline.totals))]
    fig, (bars, lines) = plt.subplots(1, 2, figsize=(12, 5), layout="constrained")
    fig.suptitle(timeline.title)
    left = [0.0] * len(names)
    for key in _TOTALS:
        values = [t[key] / 1e6 for t in timeline.totals]
        label = key.removesuffix("_ns")
        bars.barh(names, values, left=left, color=_COLOURS[key], label=label)
        left = [a + b for a, b in zip(left, values, strict=True)]
    bars.invert_yaxis()  # vCPU 0 on top
    bars.set_xlabel("ms")
    bars.set_title("run / steal / idle per vCPU")
    bars.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, frameon=False)
    for name, points in zip(names, timeline.steal, strict=True):
        if points:
            xs, ys = zip(*points, strict=True)
            lines.step(xs, ys, where="post", label=name)
    lines.set_xlabel("time (ms)")
    lines.set_ylabel("stolen (ms)")
    lines.set_title("stolen time")
    lines.set_ylim(bottom=0)
    lines.set_xlim(left=0)
    if lines.get_legend_handles_labels()[0]:
        columns = min(len(names), 6)
        lines.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=columns, frameon=False)
    return fig


def plot(
    timeline: Annotated[Path, typer.Argument(help="a file from pvkit run --timeline")],
    output: Annotated[Path, typer.Option("-o", "--output", help="PNG to write")] = Path(
        "steal.png"
    ),
) -> None:
    """Draw per-vCPU run/steal/idle totals and each vCPU's stolen time over time."""
    fig = draw(load(timeline))
    import matplotlib.pyplot as plt

    tmp = output.with_name(output.name + ".tmp.png")
    try:
        fig.savefig(tmp, dpi=100)
        tmp.replace(output)
    except OSError as exc:
        raise fail(f"cannot write {output}: {exc.strerror}") from None
    finally:
        plt.close(fig)
    typer.echo(f"pvkit: wrote {output}")
