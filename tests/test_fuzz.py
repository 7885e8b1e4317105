"""`pvkit fuzz`: a short run per arch holds every invariant, and broken invariants are caught."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

from pvkit.abi.x86_kvm import KvmHypercall
from pvkit.fuzz import (
    IMAGES,
    KVM_ENOSYS,
    SMCCC_NOT_SUPPORTED,
    FuzzConfig,
    FuzzError,
    FuzzSink,
    fuzz,
    parse_summary,
)
from pvkit.hypercall.call import Call
from pvkit.hypercall.namespace import Abi, Function, IdRange
from pvkit.machine.memory import GUARD_BYTES, GuestMemory
from pvkit.services.base import Service
from pvkit.trace.events import CallEvent

from .conftest import pvkit

SHORT = 3000


@pytest.mark.parametrize("arch", ["arm64", "x86_64"])
def test_a_short_fuzz_run_holds_every_invariant(arch: str) -> None:
    report = fuzz(FuzzConfig(arch=arch, calls=SHORT, seed=11, smp=2))
    assert report.ok, report.details()
    first, second = report.runs
    assert first.summary is not None and first.summary.calls == SHORT
    assert first.summary.violations == 0
    assert first.summary.hash == second.summary.hash  # type: ignore[union-attr]
    assert first.sink.unserved > SHORT // 4  # random IDs mostly hit nothing
    assert first.sink.calls >= SHORT and first.guarded
    assert "same_seed=identical" in report.line() and report.line().endswith(": ok")


def test_arm64_storms_start_secondaries() -> None:
    report = fuzz(FuzzConfig(arch="arm64", calls=20_000, seed=3, smp=3), repeat=1)
    assert report.ok, report.details()
    summary = report.runs[0].summary
    assert summary is not None and summary.fields["cpu_on"] > 5
    assert summary.fields["secondary_calls"] >= summary.fields["cpu_on"]


def test_amd_x86_fuzz_holds_every_invariant() -> None:
    report = fuzz(FuzzConfig(arch="x86_64", calls=SHORT, seed=5, vendor="amd"))
    assert report.ok, report.details()
    assert report.runs[0].summary.fields["user_calls"] > 0  # type: ignore[union-attr]


def test_different_seeds_give_different_results() -> None:
    a = fuzz(FuzzConfig(arch="arm64", calls=500, seed=1), repeat=1).runs[0].summary
    b = fuzz(FuzzConfig(arch="arm64", calls=500, seed=2), repeat=1).runs[0].summary
    assert a is not None and b is not None and a.hash != b.hash


class Raising(Service):
    """A broken service: its handler raises (a host bug the fuzzer must report)."""

    name = "broken"

    def __init__(self, fid: int, abi: Abi):
        super().__init__()
        self.fid = fid
        self.abi = abi
        self.abis = frozenset({abi})  # type: ignore[misc]

    def claims(self, abi: Abi = Abi.SMCCC) -> list[IdRange]:
        return [IdRange(self.fid, self.fid)]

    def functions(self, abi: Abi = Abi.SMCCC) -> list[Function]:
        return [Function(self.fid, "BROKEN", self._call)]

    def _call(self, call: Call) -> None:
        raise ValueError("deliberately broken")


@pytest.mark.parametrize(
    ("arch", "fid", "abi"),
    [("arm64", 0x8600_0002, Abi.SMCCC), ("x86_64", KvmHypercall.MIPS_GET_CLOCK_FREQ, Abi.KVM_X86)],
)
def test_a_service_that_raises_fails_the_run(arch: str, fid: int, abi: Abi) -> None:
    config = FuzzConfig(arch=arch, calls=SHORT, seed=11, extra_services=lambda: [Raising(fid, abi)])
    report = fuzz(config, repeat=1)
    assert not report.ok
    failed = {i.name for i in report.invariants if not i.ok}
    assert failed == {"no host exception"}, report.details()
    assert "deliberately broken" in " ".join(report.details())
    assert "FAILED: no host exception" in report.line()


def _event(fid: int, action: str, results: tuple[int, ...], detail: str | None = None) -> CallEvent:
    return CallEvent(0, "hvc", fid, "", (), results, action, 0, 0, detail)


def test_the_sink_counts_unserved_calls_with_the_wrong_answer() -> None:
    arm = FuzzSink("arm64")
    arm.on_call(_event(0x8600_0002, "unknown", (SMCCC_NOT_SUPPORTED, 0, 0, 0)))
    arm.on_call(_event(0x8600_0003, "unknown", (0, 0, 0, 0)))  # would be a host bug
    arm.on_call(_event(0x8400_0000, "rejected", (SMCCC_NOT_SUPPORTED, 0, 0, 0)))
    arm.on_call(_event(0x8400_0000, "handle", (0x10001, 0, 0, 0)))
    assert (arm.calls, arm.unserved, arm.wrong_count) == (4, 3, 1)
    x86 = FuzzSink("x86_64")
    x86.on_call(_event(99, "unknown", (KVM_ENOSYS,)))
    x86.on_call(_event(5, "rejected", (KVM_ENOSYS,), "hypercall from CPL 3: only CPL 0 may call"))
    assert x86.wrong_count == 1  # CPL 3 must answer -KVM_EPERM


def test_the_guest_summary_line_is_parsed() -> None:
    line = "fuzz: arch=arm64 seed=3 calls=20 secondary_calls=4 cpu_on=2 violations=0 hash=0x0f\r\n"
    s = parse_summary("noise\n" + line)
    assert s is not None and (s.calls, s.violations, s.hash) == (20, 0, "0x0f")
    assert s.fields["cpu_on"] == 2
    assert parse_summary("nothing") is None and parse_summary(line + line) is None


def test_bad_parameters_are_one_sentence() -> None:
    with pytest.raises(FuzzError, match="--arch"):
        FuzzConfig(arch="riscv64").check()
    with pytest.raises(FuzzError, match="--calls"):
        FuzzConfig(calls=0).check()
    with pytest.raises(FuzzError, match="--seed"):
        FuzzConfig(seed=1 << 64).check()


def test_guarded_memory_behaves_like_plain_memory() -> None:
    m = GuestMemory(0x4000_0000, 1 << 20, guarded=True)
    assert m.guarded
    m.write(0x4000_0000, b"\x01\x02")
    m.write_u64(0x400F_FFF8, 0x1122334455667788)
    m.store_u64(0x4000_0008, 7)
    assert m.read(0x4000_0000, 2) == b"\x01\x02"
    assert ctypes.c_uint64.from_address(m.host_address + 8).value == 7
    assert ctypes.c_uint64.from_address(m.host_address + (1 << 20) - 8).value == 0x1122334455667788
    m.clear()
    assert m.read_u64(0x400F_FFF8) == 0


@pytest.mark.parametrize("where", ["below", "above"])
def test_a_host_write_past_guarded_ram_faults(where: str) -> None:
    offset = "-1" if where == "below" else f"{1 << 20}"
    code = (
        "import ctypes, faulthandler; faulthandler.disable()\n"
        "from pvkit.machine.memory import GuestMemory\n"
        "m = GuestMemory(0, 1 << 20, guarded=True)\n"
        f"ctypes.memset(m.host_address + {offset}, 0, 1)\n"
        "print('not reached')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == -11 and "not reached" not in run.stdout  # SIGSEGV
    assert GUARD_BYTES >= 4096


def test_the_cli_prints_one_line_and_exits_0() -> None:
    r = pvkit("fuzz", "--arch", "x86_64", "--calls", "1000", "--seed", "4")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pvkit fuzz: arch=x86_64 seed=4 calls=1000 ")
    assert "wrong_answers=0 host_errors=0 violations=0 guard=on same_seed=identical" in lines[0]


def test_the_cli_refuses_bad_options() -> None:
    r = pvkit("fuzz", "--arch", "mips")
    assert r.returncode == 2 and r.stderr.startswith("pvkit: --arch 'mips'")


def test_the_fuzz_images_are_shipped() -> None:
    assert all(p.is_file() for p in IMAGES.values())


def test_a_run_that_does_not_end_is_cut_off_and_reported() -> None:
    config = FuzzConfig(arch="arm64", calls=100_000_000, seed=2, timeout_s=1)
    report = fuzz(config, repeat=1)
    failed = {i.name for i in report.invariants if not i.ok}
    assert {"the guest ended the run", "every call made"} <= failed
    assert "timeout" in " ".join(report.details())
