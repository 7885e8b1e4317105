"""A debugger's view of a VM, whatever protocol drives it: vCPUs as threads, breakpoints
and watchpoints kept on every engine (the ones that exist and the ones powered on later),
all-stop pauses, continues and single steps, through the VM's control plane.

Stop causes the debugger hands the control plane are `Hit`s (a breakpoint, a watchpoint,
a step) or one of the words below; the front end turns them into stop replies.

Engines are used only while the VM stands (`wait` returned a stop, no `resume` since) and
under the debugger's lock, which a vCPU also takes before its engine goes away and the
control plane before a run's end lets vCPUs go: no engine is touched while it runs or
once it is closed. Outside a stop every request that needs an engine fails.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from pvkit.backends.base import ExitKind, VcpuEngine, VcpuExit
from pvkit.backends.debug_port import ArchRegisters, UnicornDebugPort, WatchKind, Watchpoint
from pvkit.backends.unicorn_vcpu import UnicornVcpu
from pvkit.machine.control import Stop, VmControl

INTERRUPT = "interrupt"  # the debugger asked (gdb's Ctrl-C)
ATTACH = "attach"  # a debugger connected to a running VM
FREEZE = "freeze"  # -S: stopped before the first instruction
MAX_WATCHPOINTS = 64
MAX_BREAKPOINTS = 4096
# Exits after which a vCPU gives up its host CPU: a step that has not run by then needs
# the other vCPUs to run too (with deterministic time only one runs at a time).
_YIELDS = (ExitKind.KICKED, ExitKind.SLICE_END, ExitKind.HALT, ExitKind.PAGE_ABSENT)


class Debugger:
    def __init__(self, control: VmControl, arch: ArchRegisters):
        self.arch = arch
        self._control = control
        self._lock = threading.Lock()
        self._ports: dict[int, UnicornDebugPort] = {}
        # vCPUs that were on and are off now: their registers as they powered off
        self._off: dict[int, list[bytes]] = {}
        self._software: set[int] = set()
        self._hardware: set[int] = set()
        self._watches: dict[Watchpoint, int] = {}  # how many times each was inserted
        self._step_alone: int | None = None
        self._halted = False  # the VM stands and its engines may be used
        self._front = control.front_end(
            "gdb",
            after_run=self._after_run,
            on_attach=self._attach,
            on_detach=self._detach,
            on_close=self._closing,
        )

    @property
    def halted(self) -> bool:
        return self._halted

    # -- what the front end asks (while the VM is stopped) ------------------------------
    def threads(self) -> list[int]:
        """Every vCPU that has been on: a thread from its first power-on on."""
        with self._lock:
            return sorted({*self._ports, *self._off})

    def running_threads(self) -> list[int]:
        """The vCPUs that are on now."""
        with self._lock:
            return sorted(self._ports)

    def read_registers(self, vcpu: int, numbers: Iterable[int]) -> list[bytes] | None:
        """An off vCPU shows the registers it powered off with."""
        with self._lock:
            if not self._halted:
                return None
            port = self._ports.get(vcpu)
            if port is None:
                saved = self._off.get(vcpu)
                return None if saved is None else [saved[n] for n in numbers]
            values = [port.read_register(n) for n in numbers]
        return None if any(v is None for v in values) else values  # type: ignore[return-value]

    def write_register(self, vcpu: int, number: int, data: bytes) -> bool:
        with self._lock:
            port = self._port(vcpu)
            return port is not None and port.write_register(number, data)

    def pc(self, vcpu: int) -> int | None:
        with self._lock:
            port = self._port(vcpu)
            return None if port is None else port.pc()

    def read_memory(self, vcpu: int, address: int, size: int) -> bytes | None:
        """Guest-virtual, through `vcpu`'s MMU (an off one's: another's); None if any
        of it is not RAM."""
        with self._lock:
            port = self._port(vcpu) or self._port(min(self._ports, default=-1))
            return None if port is None else port.read_memory(address, size)

    def insert(self, kind: int, address: int, length: int) -> bool:
        """gdb's Z types: 0 software and 1 hardware breakpoint, 2-4 watchpoints."""
        with self._lock:
            if not self._halted:
                return False
            if not 0 <= address < 1 << 64 or address + max(length, 1) > 1 << 64:
                return False
            if kind in (0, 1):
                points = self._software if kind == 0 else self._hardware
                if len(self._software) + len(self._hardware) >= MAX_BREAKPOINTS:
                    return False
                points.add(address)
            else:
                if not 1 <= length <= 1 << 20 or len(self._watches) >= MAX_WATCHPOINTS:
                    return False
                w = Watchpoint(address, length, WatchKind(kind))
                self._watches[w] = self._watches.get(w, 0) + 1
            self._sync()
        return True

    def remove(self, kind: int, address: int, length: int) -> bool:
        with self._lock:
            if not self._halted:
                return False
            if kind in (0, 1):
                points = self._software if kind == 0 else self._hardware
                if address not in points:
                    return False
                points.discard(address)
            else:
                w = Watchpoint(address, length, WatchKind(kind))
                if w not in self._watches:
                    return False
                self._watches[w] -= 1
                if not self._watches[w]:
                    del self._watches[w]
            self._sync()
        return True

    def clear(self) -> None:
        """Forget every breakpoint and watchpoint (the debugger went away); while the VM
        stands, or the engines keep theirs."""
        with self._lock:
            if not self._halted:
                return
            self._software.clear()
            self._hardware.clear()
            self._watches.clear()
            self._sync()

    def is_hardware(self, address: int) -> bool:
        with self._lock:
            return address in self._hardware and address not in self._software

    def write_memory(self, vcpu: int, address: int, data: bytes) -> bool:
        """Through `vcpu`'s MMU; code translated from those bytes is dropped everywhere."""
        with self._lock:
            port = self._port(vcpu)
            if port is None or not port.write_memory(address, data):
                return False
            for other in self._ports.values():
                other.forget_code(address, len(data))
        return True

    def resume(self, step: int | None = None, alone: Iterable[int] | None = None) -> None:
        """Continue; `step` executes one instruction on that vCPU and stops the VM after
        it; `alone`: only those vCPUs run (others stay stopped), if they can."""
        with self._lock:
            if not self._halted:
                return
            self._halted = False
            ports = self._ports
            for port in ports.values():
                port.release()
            chosen = None if alone is None else [v for v in alone if v in ports]
            if chosen is not None and not (
                chosen and all(self._control.can_run_alone(v) for v in chosen)
            ):
                chosen = None  # one of them waits for a host CPU or a wake-up: all run
            self._step_alone = step if chosen is not None else None
            if step is not None and step in ports:
                ports[step].arm_step()
            self._front.resume(chosen)

    def pause(self, cause: object, vcpu: int | None = None) -> None:
        """Stop the VM (FREEZE before it runs, ATTACH when a client connects)."""
        self._front.pause(cause, vcpu)

    def interrupt(self) -> None:
        self._front.pause(INTERRUPT)

    def wait(self, timeout: float | None) -> Stop | None:
        """The stop, once the VM stands; None at the timeout or when the VM has ended."""
        stop = self._front.wait_stopped(timeout)
        if stop is not None:
            with self._lock:
                self._halted = True
        return stop

    # -- the control plane's callbacks (on vCPU threads) --------------------------------
    def _attach(self, vcpu: int, engine: VcpuEngine) -> None:
        if not isinstance(engine, UnicornVcpu):
            return  # nothing to debug in it
        port = UnicornDebugPort(engine, self.arch)
        with self._lock:
            self._off.pop(vcpu, None)
            self._ports[vcpu] = port
            port.set_breakpoints(self._software | self._hardware)
            port.set_watchpoints(list(self._watches))

    def _detach(self, vcpu: int, engine: VcpuEngine) -> None:
        with self._lock:
            port = self._ports.pop(vcpu, None)
            if port is not None:
                count = len(self.arch.registers)
                self._off[vcpu] = [port.read_register(n) or b"" for n in range(count)]
        if port is not None:
            port.close()

    def _after_run(self, vcpu: int, exit_: VcpuExit) -> None:
        port = self._ports.get(vcpu)
        if port is None:
            return
        hit = port.take_hit()
        if hit is not None:
            self._front.report(vcpu, hit)
        elif self._step_alone == vcpu and port.stepping and exit_.kind in _YIELDS:
            self._step_alone = None
            self._front.resume()  # its step needs the others to run first

    def _closing(self) -> None:
        with self._lock:  # waits for a request using an engine to finish
            self._halted = False

    def _port(self, vcpu: int) -> UnicornDebugPort | None:
        return self._ports.get(vcpu) if self._halted else None

    def _sync(self) -> None:
        """With the lock held: every engine gets the current breakpoints and watchpoints."""
        addresses = self._software | self._hardware
        watches = list(self._watches)
        for port in self._ports.values():
            port.set_breakpoints(addresses)
            port.set_watchpoints(watches)
