"""`pvkit fuzz`: a guest throws random hypercalls at the host, the host checks invariants.

The guests (guests/conformance/fuzz.c for arm64, guests/x86/examples/fuzz.c for x86-64) take
`seed=S calls=N` from their command line, make N random calls and print one summary line
(calls, preserved-register violations, a hash of every result), then power off. This module
runs such a guest twice with the same seed, in --deterministic mode and with guard pages
around guest RAM, and checks (docs/fuzzing.md):

- no host exception: the dispatcher counted no failing handler, and the run ended by the
  guest's own power-off (SYSTEM_OFF, isa-debug-exit 0) after it printed its summary;
- every call no service served (trace action "unknown", "hidden", "rejected" or "deny") got
  the ABI's refusal: SMCCC NOT_SUPPORTED, -KVM_ENOSYS, or -KVM_EPERM for a call from CPL > 0;
- the guest saw no register the ABI preserves change (its own count);
- no host write outside guest RAM: RAM sits between PROT_NONE guard pages, so a stray host
  write kills the process (a fault, never a silent overwrite); Python-side accesses are
  bounds-checked by GuestMemory anyway;
- the same seed gives the same guest result hash and the same trace (every call's vCPU,
  conduit, ID, arguments, results, action and outcome).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pvkit.abi.x86_kvm import KvmError, kvm_error
from pvkit.machine.vm import StopKind, StopReason
from pvkit.services.base import Service
from pvkit.trace.events import CallEvent, TraceHub, VmEvent

GUESTS = Path(__file__).resolve().parents[3] / "guests" / "prebuilt"
IMAGES = {"arm64": GUESTS / "fuzz.Image", "x86_64": GUESTS / "fuzz-x86.elf"}
ARCHES = tuple(IMAGES)
MAX_CALLS = 1 << 40
DEFAULT_SMP = 2

SMCCC_NOT_SUPPORTED = (1 << 64) - 1
KVM_ENOSYS = kvm_error(KvmError.ENOSYS)
KVM_EPERM = kvm_error(KvmError.EPERM)
UNSERVED = frozenset({"unknown", "hidden", "rejected", "deny"})
TRNG_RND = frozenset({0x8400_0053, 0xC400_0053})
_SUMMARY = re.compile(r"^fuzz: arch=(\S+) seed=(\d+) calls=(\d+) (.*)hash=(0x[0-9a-f]+)\s*$", re.M)
_FIELD = re.compile(r"(\w+)=(\d+)")


class FuzzError(Exception):
    """A fuzz run could not start (bad parameters, missing guest image)."""


@dataclass
class FuzzConfig:
    arch: str = "arm64"
    calls: int = 10_000
    seed: int = 1
    smp: int = DEFAULT_SMP
    vendor: str = "intel"  # x86_64: which hypercall instruction is native
    guard_ram: bool = True
    image: Path | None = None  # default: the prebuilt fuzz guest of `arch`
    # Services added to the VM (a test injects a broken one); a fresh list per run.
    extra_services: Callable[[], list[Service]] | None = None
    # Wall-clock bound of one run (deterministic guest time never runs out on its own: a
    # guest stuck waiting would hang); None: 120 s + 2 ms per call.
    timeout_s: float | None = None

    @property
    def wall_limit(self) -> float:
        return self.timeout_s if self.timeout_s is not None else 120 + 0.002 * self.calls

    def check(self) -> None:
        if self.arch not in IMAGES:
            raise FuzzError(f"--arch {self.arch!r} is not one of {', '.join(ARCHES)}")
        if not 1 <= self.calls <= MAX_CALLS:
            raise FuzzError(f"--calls {self.calls} is out of range (1..{MAX_CALLS})")
        if not 0 <= self.seed < 1 << 64:
            raise FuzzError(f"--seed {self.seed} is out of range (0..2^64-1)")
        if not 1 <= self.smp <= 16:
            raise FuzzError(f"--smp {self.smp} is out of range (1..16 for the fuzz guest)")
        image = self.image or IMAGES[self.arch]
        if not image.is_file():
            raise FuzzError(f"the fuzz guest {image} is missing; build it with 'make -C guests'")


class FuzzSink:
    """A trace sink that keeps figures and a running hash, not the events (1 M calls)."""

    def __init__(self, arch: str) -> None:
        self.arch = arch
        self.calls = 0
        self.unserved = 0
        self.wrong: list[CallEvent] = []  # unserved calls with another answer (first few)
        self.wrong_count = 0
        self.errors = 0  # action "error": a handler raised
        self.handler_errors: list[str] = []
        self._hash = hashlib.blake2b(digest_size=16)

    def expected(self, event: CallEvent) -> int:
        if self.arch == "arm64":
            return SMCCC_NOT_SUPPORTED
        if event.action == "rejected" and event.detail and "CPL" in event.detail:
            return KVM_EPERM
        return KVM_ENOSYS

    def on_call(self, event: CallEvent) -> None:
        self.calls += 1
        results = event.results
        if event.function_id in TRNG_RND and event.action == "handle":
            results = results[:1]  # the host's true entropy: never replayable (trng.py)
        key = (
            event.vcpu,
            event.conduit,
            event.function_id,
            event.args,
            results,
            event.action,
            event.outcome,
        )
        self._hash.update(repr(key).encode())
        if event.action == "error":
            self.errors += 1
        elif event.action in UNSERVED:
            self.unserved += 1
            if event.outcome == "resume" and (
                not event.results or event.results[0] != self.expected(event)
            ):
                self.wrong_count += 1
                if len(self.wrong) < 5:
                    self.wrong.append(event)

    def on_event(self, event: VmEvent) -> None:
        if event.kind == "handler_error" and len(self.handler_errors) < 5:
            self.handler_errors.append(str(event.fields.get("error")))

    def close(self) -> None:
        pass

    @property
    def digest(self) -> str:
        return self._hash.hexdigest()


@dataclass
class GuestSummary:
    calls: int
    hash: str
    fields: dict[str, int]

    @property
    def violations(self) -> int:
        return self.fields.get("violations", -1)


@dataclass
class RunResult:
    reason: StopReason
    internal_errors: int
    sink: FuzzSink
    summary: GuestSummary | None
    console: str
    guarded: bool
    seconds: float


@dataclass
class Invariant:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class FuzzReport:
    config: FuzzConfig
    runs: list[RunResult]
    invariants: list[Invariant] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(i.ok for i in self.invariants)

    def line(self) -> str:
        """The one summary line `pvkit fuzz` prints."""
        first = self.runs[0]
        s, sink = first.summary, first.sink
        extra = ""
        if s is not None:
            extra = " ".join(f"{k}={v}" for k, v in s.fields.items() if k != "violations")
            extra = f" {extra}" if extra else ""
        failed = [i.name for i in self.invariants if not i.ok]
        verdict = "ok" if not failed else "FAILED: " + ", ".join(failed)
        return (
            f"pvkit fuzz: arch={self.config.arch} seed={self.config.seed} "
            f"calls={s.calls if s else 0}{extra} traced={sink.calls} "
            f"unserved={sink.unserved} wrong_answers={sink.wrong_count} "
            f"host_errors={first.internal_errors} "
            f"violations={s.violations if s else 'n/a'} "
            f"guard={'on' if first.guarded else 'off'} "
            f"same_seed={'identical' if self._identical() else 'DIFFERENT'} "
            f"hash={s.hash if s else 'n/a'} "
            f"time={'+'.join(f'{r.seconds:.1f}s' for r in self.runs)}: {verdict}"
        )

    def _identical(self) -> bool:
        return next((i.ok for i in self.invariants if i.name == "same seed, same results"), False)

    def details(self) -> list[str]:
        """One line per failed invariant, saying what was seen."""
        return [f"pvkit fuzz: {i.name}: {i.detail}" for i in self.invariants if not i.ok]


def parse_summary(console: str) -> GuestSummary | None:
    found = _SUMMARY.findall(console.replace("\r", ""))
    if len(found) != 1:
        return None
    _arch, _seed, calls, rest, digest = found[0]
    return GuestSummary(int(calls), digest, {k: int(v) for k, v in _FIELD.findall(rest)})


def _ended_by_guest(arch: str, reason: StopReason) -> bool:
    if reason.kind is not StopKind.SHUTDOWN:
        return False
    if arch == "arm64":
        return "SYSTEM_OFF" in reason.message
    return reason.status == 1  # isa-debug-exit with 0: (0 << 1) | 1


def run_once(config: FuzzConfig) -> RunResult:
    """One deterministic run of the fuzz guest, traced into a FuzzSink."""
    config.check()
    image = config.image or IMAGES[config.arch]
    chunks: list[bytes] = []
    hub = TraceHub()
    sink = FuzzSink(config.arch)
    hub.attach(sink)
    extra = config.extra_services() if config.extra_services else []
    bootargs = f"seed={config.seed} calls={config.calls}"
    start = time.perf_counter()
    if config.arch == "arm64":
        from pvkit.platform.virt_arm64 import VirtArm64, VirtConfig

        machine: object = VirtArm64(
            VirtConfig(
                smp=config.smp,
                console=chunks.append,
                bootargs=bootargs,
                deterministic=True,
                extra_services=extra,
                guard_ram=config.guard_ram,
                notice=lambda _m: None,
            ),
            image,
            hub,
        )
    else:
        from pvkit.platform.pc_x86 import PcConfig, PcX86

        machine = PcX86(
            PcConfig(
                smp=config.smp,
                vendor=config.vendor,
                console=chunks.append,
                bootargs=bootargs,
                deterministic=True,
                extra_services=extra,
                guard_ram=config.guard_ram,
            ),
            image,
            hub,
        )
    reason = machine.run(config.wall_limit)  # type: ignore[attr-defined]
    seconds = time.perf_counter() - start
    console = b"".join(chunks).decode(errors="replace")
    return RunResult(
        reason,
        machine.dispatcher.internal_errors,  # type: ignore[attr-defined]
        sink,
        parse_summary(console),
        console,
        machine.memory.guarded,  # type: ignore[attr-defined]
        seconds,
    )


def check(config: FuzzConfig, runs: Sequence[RunResult]) -> list[Invariant]:
    first = runs[0]
    out = []
    errors = [r.internal_errors + r.sink.errors for r in runs]
    seen = next((r.sink.handler_errors for r in runs if r.sink.handler_errors), [])
    out.append(
        Invariant(
            "no host exception",
            not any(errors),
            f"{errors[0]} failing handler(s): {'; '.join(seen)}",
        )
    )
    ended = [_ended_by_guest(config.arch, r.reason) and r.summary is not None for r in runs]
    out.append(
        Invariant(
            "the guest ended the run",
            all(ended),
            f"stopped with {first.reason.kind.value}: {first.reason.message}; console ends "
            f"{first.console[-300:]!r}",
        )
    )
    complete = all(r.summary is not None and r.summary.calls == config.calls for r in runs)
    out.append(
        Invariant(
            "every call made",
            complete,
            f"the guest reports {first.summary.calls if first.summary else 0} of {config.calls}",
        )
    )
    wrong = [r.sink.wrong_count for r in runs]
    shown = ", ".join(
        f"{e.function_id:#x} ({e.action}) -> {e.results[0] if e.results else None:#x}"
        for e in first.sink.wrong
    )
    out.append(
        Invariant(
            "unserved calls refused",
            not any(wrong),
            f"{wrong[0]} unserved call(s) got another answer: {shown}",
        )
    )
    violations = [r.summary.violations if r.summary else -1 for r in runs]
    out.append(
        Invariant(
            "preserved registers unchanged",
            all(v == 0 for v in violations),
            f"the guest counted {violations[0]} violation(s)",
        )
    )
    guarded = all(r.guarded for r in runs) or not config.guard_ram
    out.append(Invariant("guard pages around RAM", guarded, "RAM was mapped without guards"))
    if len(runs) > 1:
        a, b = runs[0], runs[1]
        same = (
            a.summary is not None
            and b.summary is not None
            and a.summary.hash == b.summary.hash
            and a.summary.fields == b.summary.fields
            and a.sink.digest == b.sink.digest
            and a.sink.calls == b.sink.calls
        )
        out.append(
            Invariant(
                "same seed, same results",
                same,
                f"guest hash {a.summary.hash if a.summary else None} vs "
                f"{b.summary.hash if b.summary else None}, trace {a.sink.digest} vs "
                f"{b.sink.digest} ({a.sink.calls} vs {b.sink.calls} calls)",
            )
        )
    return out


def fuzz(config: FuzzConfig, repeat: int = 2) -> FuzzReport:
    """Run the fuzz guest `repeat` times with the same seed and check every invariant."""
    config.check()
    runs = [run_once(config) for _ in range(max(1, repeat))]
    return FuzzReport(config, runs, check(config, runs))
