"""`pvkit run` time options as a user drives them: host CPUs, deterministic time, stats."""

from __future__ import annotations

import re

import pytest

from .conftest import PREBUILT, pvkit

STEAL = PREBUILT / "steal.Image"


def vcpu_truth(stderr: str) -> list[tuple[int, int, int]]:
    found = re.findall(r"pvkit: vcpu \d+ run_ns=(\d+) steal_ns=(\d+) idle_ns=(\d+)", stderr)
    return [tuple(int(x) for x in row) for row in found]  # type: ignore[misc]


def test_the_done_when_command_shows_three_quarters_stolen() -> None:
    r = pvkit("run", str(STEAL), "--smp", "4", "--host-cpus", "1", "--stats", "--deterministic",
              "--append", "work_ms=20", "--slice-ms", "1")  # fmt: skip
    assert r.returncode == 0, r.stderr
    truth = vcpu_truth(r.stderr)
    assert len(truth) == 4 and "vCPU time (deterministic, 1 host CPU(s))" in r.stderr
    records = [int(x) for x in re.findall(r"\(record (\d+)\)", r.stdout)]
    assert records == [steal for _run, steal, _idle in truth]
    for run, steal, _idle in truth:
        assert 0.7 <= steal / (run + steal) <= 0.8


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--host-cpus", "0"], "--host-cpus 0 must be at least 1"),
        (["--slice-ms", "0"], "a time slice must be at least 1 µs"),
        (["--timeline", "/nonexistent/t.json"], "no directory /nonexistent"),
    ],
)
def test_bad_time_options_are_one_sentence(args: list[str], message: str) -> None:
    r = pvkit("run", str(STEAL), *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
