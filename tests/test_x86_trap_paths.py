"""The x86 trap in C and its ctypes twin give the same answers and side effects.

Hypercalls: the fuzz guest makes random VMCALLs (random numbers, arguments, CPL 3 and
32-bit callers among them) in a deterministic run; both traps must produce the same trace
of calls, the same guest summary and the same console. MSRs: RDMSR/WRMSR sites are found
as code is translated and served in their own hooks, with no hook over all code.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pvkit.backends.x86 import trap as x86trap
from pvkit.backends.x86.regs import VMCALL, VMMCALL
from pvkit.bench import x86 as bench_x86
from pvkit.bench.probes import MarkerClock
from pvkit.bench.service import BENCH_SUM, BenchService
from pvkit.fuzz import FuzzConfig, run_once
from pvkit.hypercall.namespace import Abi, Function, IdRange, Memo
from pvkit.machine.vm import StopKind
from pvkit.platform.pc_x86 import PcConfig, PcX86
from pvkit.services.base import Service
from pvkit.trace.events import CallEvent, TraceHub

from .conftest import Recorder

pytestmark = pytest.mark.skipif(not x86trap.c_available(), reason="the C extension is not built")
PATHS = ("c", "ctypes")
MSR_KVM_SYSTEM_TIME_NEW = 0x4B56_4D01
EFER_SITES = 2  # the SDK's boot code reads and writes EFER (not one of pvkit's MSRs)


@given(seed=st.integers(min_value=1, max_value=2**31))
@settings(
    max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_random_hypercalls_get_the_same_answers_on_both_traps(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = {}
    for path in PATHS:
        monkeypatch.setenv("PVKIT_TRAP", path)
        runs[path] = run_once(FuzzConfig(arch="x86_64", calls=300, seed=seed, smp=1))
    c, ctypes_run = runs["c"], runs["ctypes"]
    assert c.summary is not None and c.summary.calls == 300, c.console
    assert c.sink.digest == ctypes_run.sink.digest
    assert c.summary == ctypes_run.summary
    assert c.console == ctypes_run.console
    assert c.reason == ctypes_run.reason


def _bench(bootargs: str, trap: str, **config: object) -> tuple[PcX86, str]:
    clock = MarkerClock()
    machine = PcX86(
        PcConfig(console=clock.feed, bootargs=bootargs, trap=trap, **config),  # type: ignore[arg-type]
        bench_x86.BENCH_X86,
    )
    stop = machine.run(60)
    assert stop.kind is StopKind.SHUTDOWN and stop.status == 1, stop
    return machine, clock.text.decode()


@pytest.mark.parametrize("trap", PATHS)
def test_each_rdmsr_of_a_pv_msr_is_served_by_its_own_site_hook(trap: str) -> None:
    machine, console = _bench(f"rdmsr {MSR_KVM_SYSTEM_TIME_NEW:#x} 50", trap)
    engine = machine._engines[0]
    # kvmclock was never enabled: the MSR reads 0, fifty times, each one a served exit.
    assert "bench: sum 0x0" in console
    assert engine.trap.msr_calls == 50 + EFER_SITES
    sites = engine.trap.sites()
    loop_site = [s for s in sites if machine.memory.read(s, 2) == b"\x0f\x32"]
    assert len(sites) >= 3 and len(loop_site) >= 2  # EFER's RDMSR and the loop's
    assert engine._budget is None  # nothing counts instructions: no hook over all code


def test_both_traps_find_the_same_sites_and_serve_the_same_calls() -> None:
    seen = []
    for trap in PATHS:
        machine, console = _bench(
            f"vmcall {BENCH_SUM:#x} 40", trap, extra_services=[BenchService()]
        )
        t = machine._engines[0].trap
        seen.append((console, t.sites(), t.msr_calls, t.python_calls))
    assert seen[0] == seen[1]
    console, _sites, _msrs, python_calls = seen[0]
    assert python_calls == 40
    assert "bench: last 0x2b" in console  # 1 + 39 + 3: the last call's sum, from Python


class ConstantService(Service):
    """One x86 hypercall whose answer is a per-VM constant (so the trap may answer it)."""

    name = "constant"
    abis = frozenset({Abi.KVM_X86})
    NR = 0x5A00_0001

    def claims(self, abi: Abi = Abi.KVM_X86) -> list[IdRange]:
        return [IdRange(self.NR, self.NR)]

    def functions(self, abi: Abi = Abi.KVM_X86) -> list[Function]:
        return [Function(self.NR, "CONSTANT", lambda c: c.answer(0x1234), memo=Memo.CONSTANT)]


@pytest.mark.parametrize("trap", PATHS)
def test_constant_answers_come_from_the_table_until_a_trace_sink_is_attached(trap: str) -> None:
    machine, console = _bench(
        f"vmcall {ConstantService.NR:#x} 30", trap, extra_services=[ConstantService()]
    )
    t = machine._engines[0].trap
    assert "bench: last 0x1234" in console
    assert t.table_hits == 30 and t.python_calls == 0
    # Traced, every call reaches the dispatcher, with the same answer.
    traced, _console, calls = _traced(
        f"vmcall {ConstantService.NR:#x} 30", trap, extra_services=[ConstantService()]
    )
    t = traced._engines[0].trap
    assert t.table_hits == 0 and t.python_calls == 30
    answers = [c.results for c in calls if c.function_id == ConstantService.NR]
    assert answers == [(0x1234,)] * 30


def _traced(bootargs: str, trap: str, **config: object) -> tuple[PcX86, str, list[CallEvent]]:
    """The same run with a trace sink attached: every call goes through the dispatcher."""
    calls: list[CallEvent] = []

    class Sink:
        def on_call(self, event: CallEvent) -> None:
            calls.append(event)

        def on_event(self, event: object) -> None:
            pass

        def close(self) -> None:
            pass

    hub = TraceHub()
    hub.attach(Sink())  # type: ignore[arg-type]
    clock = MarkerClock()
    machine = PcX86(
        PcConfig(console=clock.feed, bootargs=bootargs, trap=trap, **config),  # type: ignore[arg-type]
        bench_x86.BENCH_X86,
        hub,
    )
    stop = machine.run(60)
    assert stop.kind is StopKind.SHUTDOWN and stop.status == 1, stop
    return machine, clock.text.decode(), calls


class FlakyX86Service(Service):
    """A direct handler that raises on odd RCX and names no result when RCX is 4: the
    guest must get what the dispatcher gives a failed handler (-KVM_ENOSYS), and 0."""

    name = "flaky-x86"
    abis = frozenset({Abi.KVM_X86})
    NR = 0x5A00_0002

    def claims(self, abi: Abi = Abi.KVM_X86) -> list[IdRange]:
        return [IdRange(self.NR, self.NR)]

    def functions(self, abi: Abi = Abi.KVM_X86) -> list[Function]:
        return [Function.served_directly(self.NR, "FLAKY", self._flaky)]

    @staticmethod
    def _flaky(vcpu: int, rbx: int, rcx: int, rdx: int) -> tuple[int, ...]:
        if rcx & 1:
            raise ValueError("odd")
        return () if rcx == 4 else (rbx + rcx + rdx + vcpu,)


@pytest.mark.parametrize("trap", PATHS)
@pytest.mark.parametrize(
    ("service", "n", "last"),
    [(BenchService(), 40, "0x2b"), (FlakyX86Service(), 41, "0x2c"),
     (FlakyX86Service(), 40, "0xfffffffffffffc18"), (FlakyX86Service(), 5, "0x0")],
    ids=["sum", "flaky-even", "flaky-raises", "flaky-none"],
)  # fmt: skip
def test_a_direct_handler_gives_the_dispatchers_answer_without_the_dispatcher(
    trap: str, service: Service, n: int, last: str
) -> None:
    """BENCH_SUM(1, i, 3) and the flaky handler on the direct route (CPL 0, 64-bit, not
    traced), then traced through the dispatcher: the same last answer, and only the
    untraced run took the direct route. (-KVM_ENOSYS is -1000 in RAX.)"""
    nr = BENCH_SUM if isinstance(service, BenchService) else FlakyX86Service.NR
    machine, console = _bench(f"vmcall {nr:#x} {n}", trap, extra_services=[service])
    t = machine._engines[0].trap
    assert f"bench: last {last}\r\n" in console
    assert t.direct_calls == n and t.python_calls == n
    traced, traced_console, calls = _traced(
        f"vmcall {nr:#x} {n}", trap, extra_services=[type(service)()]
    )
    assert traced._engines[0].trap.direct_calls == 0
    assert f"bench: last {last}\r\n" in traced_console
    assert [c.results[0] for c in calls if c.function_id == nr][-1] == int(last, 16)


class MoverService(Service):
    """A direct handler whose 10th call moves the VM to an AMD host (as a restore or
    migration there does), while the guest goes on issuing VMCALL from the same site."""

    name = "mover"
    abis = frozenset({Abi.KVM_X86})
    NR = 0x5A00_0003

    def __init__(self) -> None:
        self.calls = 0
        self.machine: PcX86 | None = None

    def claims(self, abi: Abi = Abi.KVM_X86) -> list[IdRange]:
        return [IdRange(self.NR, self.NR)]

    def functions(self, abi: Abi = Abi.KVM_X86) -> list[Function]:
        return [Function.served_directly(self.NR, "MOVER", self._serve)]

    def _serve(self, vcpu: int, rbx: int, rcx: int, rdx: int) -> tuple[int, ...]:
        self.calls += 1
        if self.calls == 10 and self.machine is not None:
            self.machine.move_to_host("amd")
        return (self.calls,)


@pytest.mark.parametrize("trap", PATHS)
@pytest.mark.parametrize("traced", [False, True])
def test_after_a_vendor_move_no_route_serves_the_old_hosts_instruction(
    trap: str, traced: bool
) -> None:
    """The trap compares with the patcher's live instruction: after the move, the next
    VMCALL is patched to VMMCALL first, on the direct route as on the dispatcher's."""
    hub = TraceHub()
    if traced:
        hub.attach(Recorder())
    mover, clock = MoverService(), MarkerClock()
    config = PcConfig(
        console=clock.feed, bootargs=f"vmcall {mover.NR:#x} 30", trap=trap, extra_services=[mover]
    )
    machine = mover.machine = PcX86(config, bench_x86.BENCH_X86, hub)
    stop = machine.run(60)
    assert stop.kind is StopKind.SHUTDOWN and stop.status == 1, stop
    assert "bench: last 0x1e" in clock.text.decode() and mover.calls == 30
    assert machine.patcher is not None
    assert [(p.old, p.new) for p in machine.patcher.patches] == [(VMCALL, VMMCALL)]
    assert machine._engines[0].trap.direct_calls == (0 if traced else 30)
