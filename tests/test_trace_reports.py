"""What the trace, the timeline, --stats and the plot report: what happened, once, on one clock.

- CPU_OFF and SYSTEM_OFF succeeded: the trace said DENIED / INTERNAL_FAILURE (the preset the
  guest never reads); now they have an outcome and no results.
- JSON-lines times were host-absolute while the timeline starts at 0: both are now the
  hypervisor clock of the event's vCPU.
- The timeline's hypercalls carried only the action; now ID, conduit, arguments, results.
- --stats printed the vCPU figures twice (a table and lines); x86 numbers were decimal in a
  hex column headed "function ID".
- The plot had no title, a legend over a bar and a steal axis not starting at 0; a binary
  file was a UnicodeDecodeError traceback.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from pvkit.abi.x86_kvm import describe
from pvkit.cli.plot import Timeline, draw, load
from pvkit.machine.vm import StopKind

from .conftest import PREBUILT, X86_HELLO, boot, pvkit

STEAL = PREBUILT / "steal.Image"
RUN = ("run", str(STEAL), "--smp", "3", "--host-cpus", "1", "--deterministic",
       "--append", "work_ms=5")  # fmt: skip


@pytest.fixture(scope="module")
def traced(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
    """One deterministic run with --trace, --timeline and --stats: (trace, timeline, stderr)."""
    tmp = tmp_path_factory.mktemp("traced")
    trace, timeline = tmp / "t.jsonl", tmp / "t.json"
    r = pvkit(*RUN, "--trace", str(trace), "--timeline", str(timeline), "--stats")
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    return records, json.loads(timeline.read_text()), r.stderr


def test_calls_after_which_the_vcpu_does_not_resume_report_their_outcome_not_the_preset() -> None:
    b = boot(STEAL, smp=3, bootargs="work_ms=1")
    assert b.reason.kind is StopKind.SHUTDOWN
    by_name = {c.name: c for c in b.trace.calls}
    cpu_off, system_off = by_name["CPU_OFF"], by_name["SYSTEM_OFF"]
    assert cpu_off.outcome == "power_off" and cpu_off.results == ()  # not DENIED (-3)
    assert system_off.outcome == "stop_vm" and system_off.results == ()  # not INTERNAL_FAILURE
    assert by_name["PSCI_VERSION"].outcome == "resume" and by_name["PSCI_VERSION"].results


def test_the_trace_file_says_what_happened(traced: tuple[Any, Any, str]) -> None:
    records, _timeline, _err = traced
    calls = {c["name"]: c for c in records if c["type"] == "call"}
    assert calls["CPU_OFF"]["outcome"] == "power_off" and calls["CPU_OFF"]["results"] == []
    assert calls["SYSTEM_OFF"]["outcome"] == "stop_vm" and calls["SYSTEM_OFF"]["results"] == []
    assert "outcome" not in calls["PSCI_VERSION"]


def test_trace_times_are_the_timeline_s_clock(traced: tuple[Any, Any, str]) -> None:
    records, timeline, _err = traced
    end_us = max(e["ts"] + e.get("dur", 0) for e in timeline["traceEvents"] if "ts" in e)
    assert all(0 <= r["t_ns"] <= end_us * 1000 for r in records)  # from 0, not host-absolute
    instants = [e for e in timeline["traceEvents"] if e["ph"] == "i"]
    calls = [r for r in records if r["type"] == "call"]
    assert len(instants) == len(calls)
    stamped = {(e["tid"], e["name"], round(e["ts"] * 1000)) for e in instants}
    assert {(c["vcpu"], c["name"], c["t_ns"]) for c in calls} == stamped


def test_timeline_hypercalls_carry_id_arguments_and_results(traced: tuple[Any, Any, str]) -> None:
    records, timeline, _err = traced
    calls = [r for r in records if r["type"] == "call"]
    instants = [e for e in timeline["traceEvents"] if e["ph"] == "i"]
    key = lambda d: (d["fid"], tuple(d["args"]), tuple(d["results"]), d["action"])  # noqa: E731
    assert sorted(map(key, calls)) == sorted(key(e["args"]) for e in instants)
    off = next(e for e in instants if e["name"] == "SYSTEM_OFF")
    assert off["args"]["fid"] == "0x84000008" and off["args"]["outcome"] == "stop_vm"


def test_stats_print_each_vcpu_s_figures_once(traced: tuple[Any, Any, str]) -> None:
    _records, _timeline, err = traced
    assert "run ms" not in err and "steal ms" not in err  # the second copy, as a table
    rows = re.findall(r"^pvkit: vcpu (\d) run_ns=\d+ steal_ns=\d+ idle_ns=\d+ steal=[\d.]+%$",
                      err, re.MULTILINE)  # fmt: skip
    assert rows == ["0", "1", "2"]
    assert err.count("vcpu 1 ") == 1


def test_x86_numbers_are_hex_under_an_nr_heading() -> None:
    assert describe(0x7FFF_0000) == "unknown KVM hypercall 0x7fff0000"
    r = pvkit("run", str(X86_HELLO), "--stats")
    assert "2147418112" not in r.stderr and "unknown KVM hypercall 0x7fff0000" in r.stderr
    header = next(line for line in r.stderr.splitlines() if "mean µs" in line)
    assert " nr " in header and "function ID" not in header


# -- the plot ------------------------------------------------------------------------------
def test_plot_refuses_a_binary_file_in_one_sentence(tmp_path: Path) -> None:
    binary = tmp_path / "steal.png"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00" * 10)
    r = pvkit("plot", str(binary))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert (
        r.stderr == f"pvkit: {binary} is not a text file: give a file from pvkit run --timeline\n"
    )


@pytest.mark.parametrize(
    "document",
    [
        {"traceEvents": [], "otherData": {"vcpus": [{"run_ns": "x"}]}},
        {"traceEvents": [], "otherData": {"vcpus": [None]}},
        {"traceEvents": [], "otherData": {"vcpus": [{"run_ns": 1, "steal_ns": 1}]}},
        {"traceEvents": [], "otherData": []},
        {"traceEvents": [], "otherData": {"vcpus": []}},
    ],
)
def test_plot_refuses_a_malformed_timeline_in_one_sentence(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps(document))
    r = pvkit("plot", str(path), "-o", str(tmp_path / "x.png"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.startswith("pvkit: ")
    assert r.stderr.count("\n") == 1


def test_the_plot_is_titled_its_legends_cover_no_bar_and_steal_starts_at_0(
    traced: tuple[Any, Any, str], tmp_path: Path
) -> None:
    _records, document, _err = traced
    path = tmp_path / "t.json"
    path.write_text(json.dumps(document))
    timeline: Timeline = load(path)
    fig = draw(timeline)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
        title = fig.get_suptitle()
        assert "3 vCPU(s)" in title and "1 host CPU(s)" in title
        assert "deterministic" in title and "10 ms slices" in title
        bars, lines = fig.axes
        assert lines.get_ylim()[0] == 0
        boxes = [p.get_window_extent(renderer) for p in bars.patches]  # every bar
        boxes += [ax.get_window_extent(renderer) for ax in fig.axes]  # and both plot areas
        for ax in fig.axes:
            legend = ax.get_legend().get_window_extent(renderer)
            assert not any(legend.overlaps(box) for box in boxes), ax.get_title()
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
