"""Host memory that can be absent: which pages, when they come back, and what a vCPU pays.

Without asynchronous page faults a vCPU that touches an absent page waits for the host's
fetch, runnable but not running: stolen time, exactly the latency per page with
deterministic time.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pvkit.machine.residency import PAGE_SIZE, HostResidency, SwapSpec, parse_swap_out
from tests.conftest import PREBUILT, pvkit

BASE = 0x4000_0000
MiB = 1 << 20


def test_swap_out_accepts_a_fraction_a_range_and_a_base_plus_size() -> None:
    assert parse_swap_out("0.25") == 0.25
    assert parse_swap_out("0x48000000-0x48000fff") == (0x4800_0000, 0x4800_1000)
    assert parse_swap_out("0x48000000+4M") == (0x4800_0000, 0x4840_0000)
    assert parse_swap_out("0x48000000+64K") == (0x4800_0000, 0x4801_0000)


@pytest.mark.parametrize("text", ["1.5", "-0.1", "nan", "x", "0x2000-0x1000", "0x1000+0", ""])
def test_swap_out_refuses_what_is_not_a_fraction_or_range(text: str) -> None:
    with pytest.raises(ValueError, match="--swap-out"):
        parse_swap_out(text)


def test_a_fraction_picks_the_same_pages_every_time_and_about_that_many() -> None:
    spec = SwapSpec(fraction=0.25)
    a, b = HostResidency(BASE, 64 * MiB, spec), HostResidency(BASE, 64 * MiB, spec)
    a.apply()
    b.apply()
    assert bytes(a.map) == bytes(b.map)
    assert abs(a.stats.absent_at_boot - a.pages // 4) < a.pages // 50


def test_a_range_is_clipped_to_ram_and_rounded_out_to_pages() -> None:
    r = HostResidency(BASE, 16 * MiB, SwapSpec(ranges=((BASE - PAGE_SIZE, BASE + 10),)))
    r.apply()
    assert r.is_absent(BASE) and not r.is_absent(BASE + PAGE_SIZE)
    assert r.stats.absent_at_boot == 1


def test_a_touched_page_is_present_after_the_latency_and_only_then() -> None:
    r = HostResidency(BASE, 16 * MiB, SwapSpec(latency_ns=1000, ranges=((BASE, BASE + 8192),)))
    r.apply()
    assert r.touch(0, now_ns=500) == 1500
    assert r.touch(0, now_ns=900) == 1500  # one fetch per page, whoever touches it
    assert r.complete_due(1499) == [] and r.is_absent(BASE)
    assert r.complete_due(1500) == [0] and not r.is_absent(BASE)
    assert r.is_absent(BASE + PAGE_SIZE)  # its neighbour was never touched
    assert (r.stats.touched, r.stats.fetched) == (1, 1)


def test_apply_brings_back_the_boot_state() -> None:
    r = HostResidency(BASE, 16 * MiB, SwapSpec(latency_ns=1, ranges=((BASE, BASE + 4096),)))
    r.apply()
    r.touch(0, 0)
    r.complete_due(1)
    r.apply()
    assert r.is_absent(BASE) and r.stats.fetched == 0


def _figures(stderr: str) -> tuple[list[int], dict[str, int]]:
    steal = [int(s) for s in re.findall(r"vcpu \d+ run_ns=\d+ steal_ns=(\d+)", stderr)]
    swap = re.search(r"pvkit: swap (.*)", stderr)
    assert swap is not None, stderr
    return steal, {k: int(v) for k, v in (kv.split("=") for kv in swap.group(1).split())}


def test_without_async_pf_each_absent_page_costs_the_latency_as_stolen_time() -> None:
    """The whole kernel image is absent: every page of it the guest touches is one wait
    of exactly 2 ms, all of it stolen, and the guest still runs to its end."""
    run = pvkit(
        "run", str(PREBUILT / "smp-hello.Image"), "--deterministic", "--stats",
        "--swap-out", f"{BASE:#x}+4M", "--swap-latency-ms", "2", "--disable", "async-pf",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    steal, swap = _figures(run.stderr)
    assert swap["touched"] > 0 and swap["waits"] == swap["touched"] == swap["fetched"]
    assert sum(steal) == swap["waits"] * 2_000_000
    assert "hello from cpu 0" in run.stdout


def test_the_same_deterministic_run_touches_the_same_pages_at_the_same_times() -> None:
    args = ("run", str(PREBUILT / "smp-hello.Image"), "--deterministic", "--stats", "--smp", "2",
            "--swap-out", "0.5", "--swap-latency-ms", "1")  # fmt: skip
    first, second = pvkit(*args), pvkit(*args)
    pick = re.compile(r"pvkit: (vcpu|swap) .*")
    assert [m.group(0) for m in pick.finditer(first.stderr)] == [
        m.group(0) for m in pick.finditer(second.stderr)
    ]


@pytest.mark.parametrize(
    ("option", "value"),
    [("--swap-out", "2"), ("--swap-out", "lots"), ("--swap-latency-ms", "nan"),
     ("--swap-latency-ms", "-1")],
)  # fmt: skip
def test_bad_swap_options_are_one_sentence_and_exit_2(option: str, value: str) -> None:
    args = [str(PREBUILT / "smp-hello.Image"), option, value]
    if option == "--swap-latency-ms":
        args += ["--swap-out", "0.1"]
    run = pvkit("run", *args)
    assert run.returncode == 2
    assert run.stderr.startswith("pvkit: ") and "Traceback" not in run.stderr


def test_the_timeline_shows_each_wait_as_a_span_as_long_as_its_stolen_time(
    tmp_path: Path,
) -> None:
    out = tmp_path / "t.json"
    run = pvkit(
        "run", str(PREBUILT / "smp-hello.Image"), "--deterministic", "--stats",
        "--swap-out", f"{BASE:#x}+4M", "--swap-latency-ms", "2", "--timeline", str(out),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    steal, swap = _figures(run.stderr)
    waits = [e for e in json.loads(out.read_text())["traceEvents"] if e["name"] == "page wait"]
    assert len(waits) == swap["waits"] > 0
    assert all(e["ph"] == "X" and e["cat"] == "swap" and e["args"]["address"] for e in waits)
    assert sum(e["dur"] for e in waits) * 1000 == sum(steal)
