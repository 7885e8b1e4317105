"""Lazy patching of the other vendor's hypercall instruction, as KVM does (Linux
arch/x86/kvm/x86.c emulator_fix_hypercall; the KVM_X86_QUIRK_FIX_HYPERCALL_INSN quirk in
Documentation/virt/kvm/api.rst, KVM_CAP_DISABLE_QUIRKS2).

A guest that executes VMMCALL on an Intel host (or VMCALL on AMD), typically after a
migration between vendors, traps. With the fix-hypercall quirk on, every other vCPU is
paused, the three bytes are rewritten to the native instruction, translated code is
dropped on every vCPU (ExecutionGate generation), and the instruction re-executes as a
real hypercall. The check is repeated under the pause, so two vCPUs trapping on the same
site at once patch it exactly once. With the quirk off the guest gets #UD instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pvkit.machine.memory import GuestMemory
from pvkit.machine.quiesce import ExecutionGate
from pvkit.trace.events import TraceHub, VmEvent


@dataclass(frozen=True, slots=True)
class PatchRecord:
    vcpu: int
    address: int  # guest-virtual RIP of the instruction
    old: bytes
    new: bytes


class HypercallPatcher:
    def __init__(
        self,
        memory: GuestMemory,
        gate: ExecutionGate,
        trace: TraceHub,
        native: bytes,
        foreign: bytes,
        fix: bool = True,
    ):
        if len(native) != 3:
            raise ValueError("a hypercall instruction is 3 bytes")
        self._native = bytearray(native)
        self.foreign = foreign
        self.fix = fix
        self.patches: list[PatchRecord] = []
        self._memory = memory
        self._gate = gate
        self._trace = trace
        self._lock = threading.Lock()

    @property
    def native(self) -> bytes:
        return bytes(self._native)

    @property
    def live_native(self) -> bytearray:
        """The native instruction as the traps read it while vCPUs run (without the GIL):
        `retarget` rewrites it in place, so a trap's short routes (constants, direct
        handlers) never serve the old host's instruction after a move (3 bytes, never
        resized)."""
        return self._native

    def retarget(self, native: bytes, foreign: bytes) -> None:
        """The VM now runs on a host whose native instruction is `native` (restore,
        migration); sites patched for the old host are foreign now and get patched back."""
        if len(native) != 3:
            raise ValueError("a hypercall instruction is 3 bytes")
        self._native[:] = native
        self.foreign = foreign

    def patch(self, vcpu: int, rip: int, physical: Sequence[int]) -> None:
        """Make the instruction at `physical` (one address per byte) native, once."""
        with self._gate.others_paused(vcpu):
            old = bytes(self._memory.read(a, 1)[0] for a in physical)
            if old != self.foreign:
                return  # another vCPU patched this site while we waited
            new = self.native
            for address, byte in zip(physical, new, strict=True):
                self._memory.write(address, bytes((byte,)))
            record = PatchRecord(vcpu, rip, old, new)
            with self._lock:
                self.patches.append(record)
        self._trace.event(
            VmEvent(
                "patch",
                time.perf_counter_ns(),
                vcpu,
                {"address": f"{rip:#x}", "old": old.hex(" "), "new": record.new.hex(" ")},
            )
        )
