"""The benchmark suite: every metric in one run, repetitions interleaved, medians and spread.

Interleaving (metric A, B, C, then A, B, C again...) spreads the drift of a shared
machine over all metrics alike, so the ratios taken from one run are fair.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass

from pvkit.bench import async_pf, linux, probes, x86
from pvkit.bench.service import BENCH_SUM
from pvkit.machine.residency import SwapSpec

PSCI_VERSION = 0x8400_0000
PV_TIME_ST = 0xC500_0021  # stateful: writes the caller's stolen-time record (direct handler)
VENDOR_CALL = 0x8600_0001  # any ID: in floor mode the trap answers before decoding it
ALU_INSTRUCTIONS = 5  # per iteration of the bench guest's loops
MEM_INSTRUCTIONS = 7
UART_LINE = 64  # the bench guest's uart lines: 63 letters and a newline, sent as CR LF
VCPU_STEPS = (1, 8, 64, 256)
VCPU_LIMIT_S = 30.0
SWAP_HALF = SwapSpec(latency_ns=0, fraction=0.5)


@dataclass(frozen=True, slots=True)
class Sizes:
    """Loop lengths: long enough that a loop takes ~0.2 s at the expected speed."""

    calls: int = 3_000_000
    python_calls: int = 300_000
    alu: int = 200_000_000
    mem: int = 3_000_000
    svc: int = 500_000
    irq: int = 5_000
    pv_time_st: int = 300_000
    uart: int = 192_000  # bytes, a multiple of UART_LINE
    reps: int = 5
    vcpu_steps: tuple[int, ...] = VCPU_STEPS
    linux: bool = True  # boot Debian's kernel (bench/linux.py): tens of seconds a sample


# Still long enough (tens of ms) for a pipe reader on a loaded machine to see the markers
# apart; shorter loops end before QEMU's output can be timed.
QUICK = Sizes(
    calls=1_000_000,
    python_calls=20_000,
    alu=20_000_000,
    mem=300_000,
    svc=100_000,
    irq=500,
    pv_time_st=20_000,
    uart=19_200,
    reps=2,
    vcpu_steps=(1, 8),
    linux=False,
)


@dataclass(frozen=True, slots=True)
class Spread:
    median: float
    min: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))

    def as_dict(self) -> dict[str, float]:
        return {"median": self.median, "min": self.min, "max": self.max}


Sample = Callable[[], float]


def _per_call_us(run: Callable[[], tuple[float, probes.PvkitCounts]], n: int, path: str) -> Sample:
    def sample() -> float:
        seconds, counts = run()
        served = counts.table_hits if path == "table" else counts.python_calls
        if served < n:
            raise probes.BenchError(
                f"expected {n} calls on the {path} path, saw {served} "
                f"(table {counts.table_hits}, Python {counts.python_calls})"
            )
        return seconds / n * 1e6

    return sample


def _samplers(sizes: Sizes, qemu: bool) -> dict[str, Sample]:
    n, np_, ns = sizes.calls, sizes.python_calls, sizes.svc
    s: dict[str, Sample] = {
        "trap_floor_us": lambda: (
            probes.pvkit_loop(f"call {VENDOR_CALL:#x} {n}", floor=True)[0] / n * 1e6
        ),
        "table_call_us": _per_call_us(
            lambda: probes.pvkit_loop(f"call {PSCI_VERSION:#x} {n}"), n, "table"
        ),
        "python_call_us": _per_call_us(
            lambda: probes.pvkit_loop(f"call {BENCH_SUM:#x} {np_} 7"), np_, "python"
        ),
        "pv_time_st_us": _per_call_us(
            lambda: probes.pvkit_loop(f"call {PV_TIME_ST:#x} {sizes.pv_time_st}"),
            sizes.pv_time_st,
            "python",
        ),
        "uart_us_per_byte": lambda: (
            probes.pvkit_cli_loop(f"uart {sizes.uart}") / _uart_bytes(sizes.uart) * 1e6
        ),
        "mips_bare": lambda: _mips(
            probes.bare_loop(f"alu {sizes.alu}"), sizes.alu, ALU_INSTRUCTIONS
        ),
        "mips_pvkit": lambda: _mips(
            probes.pvkit_loop(f"alu {sizes.alu}")[0], sizes.alu, ALU_INSTRUCTIONS
        ),
        "mips_mem_bare": lambda: _mips(
            probes.bare_loop(f"mem {sizes.mem}"), sizes.mem, MEM_INSTRUCTIONS
        ),
        "mips_mem_pvkit": lambda: _mips(
            probes.pvkit_loop(f"mem {sizes.mem}")[0], sizes.mem, MEM_INSTRUCTIONS
        ),
        # the same loads and stores with half of RAM absent on the host (but for the pages
        # the loop uses, which it brings back before "begin"): present pages cost nothing
        "mips_mem_swap": lambda: _mips(
            probes.pvkit_loop(f"mem {sizes.mem}", swap=SWAP_HALF)[0], sizes.mem, MEM_INSTRUCTIONS
        ),
        "boot_to_off_s": lambda: _must(probes.wall_time(_pvkit_run(4), 120), "pvkit boot"),
        "svc_roundtrip_us": lambda: probes.pvkit_loop(f"svc {ns}")[0] / ns * 1e6,
        "irq_latency_us": lambda: probes.pvkit_irq(sizes.irq),
    }
    if qemu:
        s["qemu_psci_us"] = lambda: probes.qemu_loop(f"call {PSCI_VERSION:#x} {n}") / n * 1e6
        s["uart_qemu_us_per_byte"] = lambda: (
            probes.qemu_loop(f"uart {sizes.uart}") / _uart_bytes(sizes.uart) * 1e6
        )
        s["boot_to_off_qemu_s"] = lambda: _must(
            probes.wall_time(probes.qemu_command(probes.SMP_HELLO, smp=4), 120), "QEMU boot"
        )
        s["svc_roundtrip_qemu_us"] = lambda: (
            probes.qemu_loop(f"svc {ns}", exceptions=True) / ns * 1e6
        )
        s["irq_latency_qemu_us"] = lambda: probes.qemu_irq(sizes.irq)
    for arch in ("arm64", "x86"):
        if async_pf.available(arch):
            s.update(_apf_samplers(arch))
    if x86.available():
        s.update(x86.samplers(sizes.alu, sizes.python_calls))
    files = linux.fetch_files() if sizes.linux else None
    if files is not None:
        s["linux_boot_s"] = lambda: _booted(linux.pvkit_command(files), "pvkit")
        if qemu:
            s["linux_boot_qemu_s"] = lambda: _booted(linux.qemu_command(files), "QEMU")
    return s


def _uart_bytes(n: int) -> int:
    """What the bench guest's `uart n` sends: n characters, and a CR before each newline."""
    return n + n // UART_LINE


def _apf_samplers(arch: str) -> dict[str, Sample]:
    """Guest time to finish the walks, and compute rounds per guest second, on and off."""
    key = f"apf_{arch}"
    return {
        f"{key}_done_ms_off": lambda: async_pf.run_guest(arch, False).guest_us / 1e3,
        f"{key}_done_ms_on": lambda: async_pf.run_guest(arch, True).guest_us / 1e3,
        f"{key}_rounds_per_s_off": lambda: async_pf.run_guest(arch, False).rounds_per_s,
        f"{key}_rounds_per_s_on": lambda: async_pf.run_guest(arch, True).rounds_per_s,
    }


def _booted(cmd: list[str], who: str) -> float:
    seconds = linux.seconds_to_marker(cmd)
    if seconds == float("inf"):
        raise probes.BenchError(f"Linux under {who} did not reach its initramfs's /init")
    return seconds


def _mips(seconds: float, iterations: int, per_iteration: int) -> float:
    return iterations * per_iteration / seconds / 1e6


def _must(value: float | None, what: str) -> float:
    if value is None:
        raise probes.BenchError(f"{what} did not reach SYSTEM_OFF")
    return value


def _pvkit_run(smp: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pvkit",
        "run",
        str(probes.SMP_HELLO),
        "--smp",
        str(smp),
        "--timeout",
        str(VCPU_LIMIT_S),
    ]


def vcpus_max(steps: tuple[int, ...]) -> int:
    """The largest step that boots smp-hello to SYSTEM_OFF within the limit (0: none)."""
    best = 0
    for smp in steps:
        if probes.wall_time(_pvkit_run(smp), VCPU_LIMIT_S + 10) is None:
            break
        best = smp
    return best


Report = dict[str, object]
Progress = Callable[[str], None]


def run_suite(sizes: Sizes, progress: Progress = lambda _m: None) -> Report:
    """Every metric; values are Spread dicts, ratios and counts plain numbers (None: n/a)."""
    qemu = probes.qemu_available()
    samplers = _samplers(sizes, qemu)
    samples: dict[str, list[float]] = {k: [] for k in samplers}
    for rep in range(sizes.reps):
        for name, sample in samplers.items():
            progress(f"rep {rep + 1}/{sizes.reps}: {name}")
            samples[name].append(sample())
    spreads = {k: Spread.of(v) for k, v in samples.items()}
    progress("vcpus_max")
    report: Report = {k: v.as_dict() for k, v in spreads.items()}
    report.setdefault("qemu_psci_us", None)
    report.setdefault("boot_to_off_qemu_s", None)
    report.setdefault("uart_qemu_us_per_byte", None)
    report.setdefault("svc_roundtrip_qemu_us", None)
    report.setdefault("irq_latency_qemu_us", None)
    report.setdefault("linux_boot_s", None)
    report.setdefault("linux_boot_qemu_s", None)
    report["table_vs_qemu"] = _ratio(spreads, "table_call_us", "qemu_psci_us")
    report["python_vs_qemu"] = _ratio(spreads, "python_call_us", "qemu_psci_us")
    report["mips_ratio"] = _ratio(spreads, "mips_pvkit", "mips_bare")
    report["mips_mem_ratio"] = _ratio(spreads, "mips_mem_pvkit", "mips_mem_bare")
    report["mips_mem_swap_ratio"] = _ratio(spreads, "mips_mem_swap", "mips_mem_pvkit")
    report["svc_roundtrip_ratio"] = _ratio(spreads, "svc_roundtrip_us", "svc_roundtrip_qemu_us")
    report["uart_ratio"] = _ratio(spreads, "uart_us_per_byte", "uart_qemu_us_per_byte")
    report["boot_to_off_ratio"] = _ratio(spreads, "boot_to_off_s", "boot_to_off_qemu_s")
    report["linux_boot_ratio"] = _ratio(spreads, "linux_boot_s", "linux_boot_qemu_s")
    report["x86_mips_ratio"] = _ratio(spreads, "x86_mips_pvkit", "x86_mips_bare")
    report["x86_vmcall_vs_arm64"] = _ratio(spreads, "x86_vmcall_us", "python_call_us")
    for arch in ("arm64", "x86"):
        key = f"apf_{arch}"
        # how much sooner the same walks end with async page faults (deterministic runs)
        report[f"{key}_speedup"] = _ratio(spreads, f"{key}_done_ms_off", f"{key}_done_ms_on")
    report["vcpus_max"] = vcpus_max(sizes.vcpu_steps)
    return report


def _ratio(spreads: dict[str, Spread], top: str, bottom: str) -> float | None:
    if top not in spreads or bottom not in spreads:
        return None
    return spreads[top].median / spreads[bottom].median


# Targets from the issue that introduced the suite: (key, comparison, bound).
TARGETS: tuple[tuple[str, str, float], ...] = (
    ("table_vs_qemu", "<=", 1.0),
    ("python_vs_qemu", "<=", 6.0),
    ("mips_ratio", ">=", 0.95),
    ("mips_mem_ratio", ">=", 0.95),
    ("vcpus_max", ">=", 256),
    ("svc_roundtrip_ratio", "<=", 3.0),  # the vCPU issue: SVC within 3x QEMU's
    ("linux_boot_ratio", "<=", 3.0),  # the Linux issue: boot to /init within 3x QEMU's
    ("mips_mem_swap_ratio", ">=", 0.95),  # absent pages cost nothing on present ones
    ("apf_arm64_speedup", ">=", 1.5),  # the async-PF issue: the reason the feature exists
    ("apf_x86_speedup", ">=", 1.5),
    ("uart_ratio", "<=", 1.5),  # the performance issue: PL011 output per byte, CLI to a pipe
    ("boot_to_off_ratio", "<=", 3.0),  # and smp-hello to SYSTEM_OFF, process start included
    ("x86_mips_ratio", ">=", 0.9),  # the performance issue: PV MSRs cost no guest speed
    ("x86_vmcall_vs_arm64", "<=", 3.0),  # and an x86 hypercall costs what an arm64 one does
)


TargetRow = tuple[str, str, float, float | None, bool | None]


def target_status(report: Report) -> list[TargetRow]:
    out: list[TargetRow] = []
    for key, op, bound in TARGETS:
        value = report.get(key)
        if not isinstance(value, int | float):
            out.append((key, op, bound, None, None))
            continue
        met = value <= bound if op == "<=" else value >= bound
        out.append((key, op, bound, float(value), met))
    return out
