"""The GIC's state for snapshots: distributor, redistributors and CPU interfaces.

Everything GicCore holds (IHI 0069 / IHI 0048: the enable, pending, active, group and
configuration bits and priorities of every INTID, the SGI sources, each CPU interface's
PMR, binary points, group enables, active priorities and output levels) plus what each
version adds (GICv3: GICD_IROUTER and GICR_WAKER; GICv2: GICD_ITARGETSR and GICC_CTLR).
Output levels are restored as they were, without signalling: the vCPUs' IRQ lines are
restored with the vCPUs.
"""

from __future__ import annotations

from dataclasses import asdict

from pvkit.devices.arm64.gic_core import ROUTE_ANY, Bank, CpuInterface, GicCore
from pvkit.snapshot.state import Fields, State

STATE_SECTION = "gic"
STATE_VERSION = 1
_ANY_WIDTH = (1 << 1024) - 1  # bitmaps are as wide as the INTIDs


def _bank(bank: Bank) -> State:
    return {"bits": list(bank.bits), "prio": list(bank.prio)}


def _load_bank(bank: Bank, state: Fields) -> None:
    bits = state.integers("bits", 6, _ANY_WIDTH)
    prio = state.integers("prio", len(bank.prio), 0xFF)
    bank.bits = bits
    bank.prio[:] = bytes(prio)


def save_core(core: GicCore) -> State:
    with core.lock:
        return {
            "private": [_bank(b) for b in core.private],
            "shared": _bank(core.shared),
            "cpus": [_cpu(c) for c in core.cpus],
            "sgi_src": [list(row) for row in core.sgi_src],
            "dist_groups": core.dist_groups,
            "route": list(core.route),
        }


def _cpu(cpu: CpuInterface) -> State:
    state = asdict(cpu)
    state["hppi"] = list(cpu.hppi) if cpu.hppi is not None else None
    return state


def restore_core(core: GicCore, state: Fields) -> None:
    n = core.ncpus
    privates, cpus = state.subs("private", n), state.subs("cpus", n)
    sgi = state.raw("sgi_src")
    if not isinstance(sgi, list) or len(sgi) != n:
        raise state.bad("sgi_src", f"{n} lists of SGI sources")
    rows = [Fields(f"{state.section}.sgi_src", {"row": row}).integers("row", 16) for row in sgi]
    route = state.integers("route", core.nirqs, _ANY_WIDTH, lo=ROUTE_ANY)
    with core.lock:
        for bank, saved in zip(core.private, privates, strict=True):
            _load_bank(bank, saved)
        _load_bank(core.shared, state.sub("shared"))
        core.cpus = [_load_cpu(c) for c in cpus]
        core.sgi_src = rows
        core.dist_groups = state.integer("dist_groups", hi=3)
        core.route = route


def _load_cpu(state: Fields) -> CpuInterface:
    hppi = state.raw("hppi")
    saved = (
        None
        if hppi is None
        else tuple(Fields(state.section, {"hppi": hppi}).integers("hppi", 3, 0xFFFF))
    )
    return CpuInterface(
        group0_fiq=state.flag("group0_fiq"),
        pmr=state.integer("pmr", hi=0xFF),
        bpr0=state.integer("bpr0", hi=7),
        bpr1=state.integer("bpr1", hi=7),
        cbpr=state.flag("cbpr"),
        eoimode=state.flag("eoimode"),
        grpen=state.flags("grpen", 2),
        apr=state.integers("apr", 2, 0xFFFF_FFFF),
        hppi=saved,  # type: ignore[arg-type]
        irq=state.flag("irq"),
        fiq=state.flag("fiq"),
    )
