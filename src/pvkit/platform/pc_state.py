"""The pc board's own state in a snapshot: INIT-before-SIPI per vCPU and patched sites.

The hypercall sites patched to the host's instruction are kept (their bytes are in RAM
already) so that a later re-patch for another vendor knows them (seed 004).
"""

from __future__ import annotations

from pvkit.backends.x86.patch import PatchRecord
from pvkit.platform.pc_x86 import PcX86
from pvkit.snapshot.state import Fields, State

STATE_SECTION = "pc-board"
STATE_VERSION = 1


def save_pc(board: PcX86) -> State:
    """INIT seen per vCPU (a SIPI starts only after one) and the hypercall sites patched."""
    with board._ipi_lock:
        init = list(board._init_seen)
    patches = [] if board.patcher is None else [
        [p.vcpu, p.address, p.old.hex(), p.new.hex()] for p in board.patcher.patches
    ]  # fmt: skip
    return {"init_seen": init, "patches": patches, "vendor": board.config.vendor}


def restore_pc(board: PcX86, state: Fields) -> None:
    init = state.flags("init_seen", board.config.smp)
    if state.text("vendor") != board.config.vendor:
        raise state.bad("vendor", f"{board.config.vendor}, the CPU vendor of this VM")
    records = state.raw("patches")
    if not isinstance(records, list):
        raise state.bad("patches", "a list of patched sites")
    patches = []
    for rec in records:
        ok = isinstance(rec, list) and len(rec) == 4 and type(rec[0]) is int
        ok = ok and type(rec[1]) is int and all(isinstance(b, str) for b in rec[2:])
        try:
            old, new = (bytes.fromhex(rec[2]), bytes.fromhex(rec[3])) if ok else (b"", b"")
        except ValueError:
            ok = False
        if not ok:
            raise state.bad("patches", "patched sites (vCPU, RIP, old, new bytes)")
        patches.append(PatchRecord(rec[0], rec[1], old, new))
    with board._ipi_lock:
        board._init_seen = init
    if board.patcher is not None:
        board.patcher.patches = patches
