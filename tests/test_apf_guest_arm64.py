"""The arm64 `apf` guest (guests/examples/apf.c): asynchronous page faults, guest side.

Four EL0 walker tasks walk their own 1 MiB of a work region at 0x48000000 (a load and a
store per 4 KiB page, two passes, the second checking the first), a compute task counts
rounds, and a cooperative scheduler at EL1 switches between them. Without the async-pf
service the guest must say so, never issue a call discovery did not prove safe, and still
do all the work correctly; with it (docs/services/async-pf.md), walkers touching absent
pages are parked and woken instead of stalling the vCPU.
"""

from __future__ import annotations

import re
import subprocess

from .conftest import PREBUILT, pvkit

APF = PREBUILT / "apf.Image"
WALKER = re.compile(r"apf: task (\d+) walked (\d+) pages x (\d+) passes")
COMPUTE = re.compile(r"apf: compute task ran (\d+) rounds")
NOTIFICATIONS = re.compile(
    r"apf: notifications: not-present=(\d+) ready=(\d+) wake-all=(\d+) unknown=(\d+)"
)
DONE = re.compile(r"apf: done in (\d+) us")
# One absent 16 KiB stretch at the start of each walker's slice, fetched in 1 ms.
SWAPPED = ["--swap-latency-ms", "1"] + [
    arg for base in range(0x4800_0000, 0x4840_0000, 0x10_0000)
    for arg in ("--swap-out", f"{base:#x}+16K")
]  # fmt: skip


def run(*args: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    result = pvkit("run", str(APF), *args)
    return result, [ln.rstrip("\r") for ln in result.stdout.splitlines()]


def only(pattern: re.Pattern[str], lines: list[str]) -> tuple[int, ...]:
    found = [m for ln in lines if (m := pattern.fullmatch(ln))]
    assert len(found) == 1, (pattern.pattern, lines)
    return tuple(int(g) for g in found[0].groups())


def check_work(lines: list[str]) -> dict[str, tuple[int, ...]]:
    """Every walker did all its pages and passes, with no data-check failure; the output
    comes in the documented order. Returns the parsed summary lines."""
    assert not [ln for ln in lines if "FAILED" in ln or "guest exception" in ln], lines
    walkers = {int(m[1]): (int(m[2]), int(m[3])) for ln in lines if (m := WALKER.fullmatch(ln))}
    assert walkers == {i: (256, 2) for i in range(4)}, lines
    apf = [ln for ln in lines if ln.startswith("apf: ")]
    assert apf[0].startswith("apf: async page faults ")
    assert [WALKER.fullmatch(ln) is not None for ln in apf[1:5]] == [True] * 4
    assert COMPUTE.fullmatch(apf[5]) and NOTIFICATIONS.fullmatch(apf[6]) and DONE.fullmatch(apf[7])
    summary = {
        "rounds": only(COMPUTE, lines),
        "notifications": only(NOTIFICATIONS, lines),
        "done": only(DONE, lines),
    }
    assert summary["rounds"][0] > 0
    return summary


def test_without_the_service_it_says_so_and_does_all_the_work() -> None:
    result, lines = run("--disable", "async-pf")
    assert result.returncode == 0, result.stdout + result.stderr
    assert lines[0] == "apf: async page faults off (not advertised)"
    summary = check_work(lines)
    assert summary["notifications"] == (0, 0, 0, 0)
    assert "PSCI SYSTEM_OFF" in result.stdout + result.stderr


def test_without_the_service_under_the_pvkit_profile() -> None:
    result, lines = run("--profile", "pvkit", "--disable", "async-pf")
    assert result.returncode == 0, result.stdout + result.stderr
    assert lines[0] == "apf: async page faults off (not advertised)"
    assert check_work(lines)["notifications"] == (0, 0, 0, 0)


def test_without_a_hypervisor_no_call_is_made() -> None:
    # HVC is undefined here: one issued anyway would be a "guest exception". With no PSCI
    # there is no SYSTEM_OFF either, so the guest ends halted (exit code 3, idle).
    result, lines = run("--profile", "none")
    assert lines[0] == "apf: async page faults off (no hypervisor conduit)"
    assert check_work(lines)["notifications"] == (0, 0, 0, 0)
    assert result.returncode == 3, result.stdout + result.stderr


def test_deterministic_runs_repeat_exactly() -> None:
    first, lines = run("--deterministic", "--disable", "async-pf")
    again, lines_again = run("--deterministic", "--disable", "async-pf")
    assert first.returncode == again.returncode == 0
    check_work(lines)
    assert lines == lines_again  # the elapsed time too: it comes from guest instructions


def test_without_the_service_absent_pages_only_cost_time() -> None:
    result, lines = run("--deterministic", "--disable", "async-pf", *SWAPPED)
    assert result.returncode == 0, result.stdout + result.stderr
    assert lines[0] == "apf: async page faults off (not advertised)"
    assert check_work(lines)["notifications"] == (0, 0, 0, 0)


def test_with_the_service_walkers_are_parked_and_woken() -> None:
    result, lines = run("--deterministic", *SWAPPED)
    assert result.returncode == 0, result.stdout + result.stderr
    assert lines[0] == "apf: async page faults on (version 1.0.0, 64 slots, PPI 17)"
    on = check_work(lines)
    not_present, ready, wake_all, unknown = on["notifications"]
    assert 0 < not_present <= 16  # 16 absent pages; a touch that is not told waits instead
    assert ready == not_present  # every parked walker was woken by its own token
    assert (wake_all, unknown) == (1, 0)  # ENABLE's wake-all; no stray tokens
    _, off_lines = run("--deterministic", "--disable", "async-pf", *SWAPPED)
    off = check_work(off_lines)
    assert on["rounds"] > off["rounds"]  # the compute task ran while walkers waited
    assert on["done"] < off["done"]
