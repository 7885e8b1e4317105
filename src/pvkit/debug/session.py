"""One gdb connection's commands (gdb manual, "Remote Protocol", "Packets"): what a
system debugger needs, in all-stop mode, with each vCPU as a thread (id = vCPU + 1).

`handle` answers a packet's payload with a reply payload, or with None when the target
now runs and the reply is the stop that comes later (`stop_reply`). Whatever a packet
holds, the answer is a reply ("" for a command pvkit does not know, Enn for a bad one);
nothing raises.
"""

from __future__ import annotations

from collections.abc import Callable

from pvkit.backends.debug_port import Hit, WatchKind
from pvkit.debug.debugger import INTERRUPT, Debugger
from pvkit.debug.packets import MAX_PACKET
from pvkit.debug.target_xml import target_xml
from pvkit.machine.control import Stop

SIGINT = 2
SIGTRAP = 5
E_BAD = b"E01"  # a malformed or impossible request
E_FAULT = b"E14"  # memory that is not there (EFAULT)
MAX_MEMORY = (MAX_PACKET - 32) // 2  # bytes of memory a reply carries in hex
_WATCH_WORDS = {WatchKind.WRITE: "watch", WatchKind.READ: "rwatch", WatchKind.ACCESS: "awatch"}
_SUPPORTED = (
    f"PacketSize={MAX_PACKET:x};qXfer:features:read+;swbreak+;hwbreak+;"
    "QStartNoAckMode+;vContSupported+"
).encode()


class BadPacket(ValueError):
    """A packet pvkit cannot make sense of: answered E01."""


class Session:
    def __init__(self, debugger: Debugger, kill: Callable[[], None]):
        self._dbg = debugger
        self._kill = kill
        self._xml = target_xml(debugger.arch.arch, debugger.arch.registers)
        self._registers = range(len(debugger.arch.registers))
        self._g: int | None = None  # Hg: the thread register and memory packets use
        self._c: int | None = None  # Hc: the thread c and s resume (older gdbs)
        self._stop: Stop | None = None
        self.no_ack = False  # QStartNoAckMode was agreed
        self.detached = False  # D or k: the connection ends after the reply

    # -- stops ----------------------------------------------------------------------------
    def stopped(self, stop: Stop) -> None:
        self._stop = stop
        self._g = self._c = self._stop_thread(stop)

    def stop_reply(self) -> bytes:
        stop = self._stop
        vcpu = self._stop_thread(stop) if stop is not None else None
        if vcpu is None:
            return b"S05"
        cause = stop.cause if stop is not None else None
        signal = SIGINT if cause == INTERRUPT else SIGTRAP
        reason = ""
        if isinstance(cause, Hit):
            if cause.what == "breakpoint":
                reason = "hwbreak:;" if self._dbg.is_hardware(cause.address) else "swbreak:;"
            elif cause.what == "watch" and cause.watch is not None:
                reason = f"{_WATCH_WORDS[cause.watch]}:{cause.address:x};"
        return f"T{signal:02x}thread:{vcpu + 1:x};{reason}".encode()

    def _stop_thread(self, stop: Stop | None) -> int | None:
        threads = self._dbg.running_threads() or self._dbg.threads()
        if stop is not None and stop.vcpu in threads:
            return stop.vcpu
        if self._g in threads:
            return self._g
        return threads[0] if threads else None

    # -- packets --------------------------------------------------------------------------
    def handle(self, payload: bytes) -> bytes | None:
        try:
            return self._dispatch(payload.decode("latin-1"), payload)
        except Exception:  # BadPacket, bad numbers, and anything else: never the host's end
            return E_BAD

    def _dispatch(self, text: str, raw: bytes) -> bytes | None:
        if not text:
            return b""
        head, rest = text[0], text[1:]
        simple = {
            "?": lambda: self.stop_reply(),
            "g": self._read_all,
            "k": self._kill_vm,
            "D": self._detach,
        }
        if head in simple:
            return simple[head]()
        if head == "G":
            return self._write_all(rest)
        if head == "p":
            return self._read_one(rest)
        if head == "P":
            return self._write_one(rest)
        if head == "m":
            return self._read_memory(rest)
        if head == "M":
            return self._write_memory(rest)
        if head == "X":
            return self._write_binary(raw[1:])
        if head in "Zz":
            return self._point(head == "Z", rest)
        if head == "H":
            return self._set_thread(rest)
        if head == "T":
            return b"OK" if _thread(rest) in self._dbg.threads() else E_BAD
        if head in "cC":
            return self._resume(None, _resume_address(rest, head == "C"))
        if head in "sS":
            vcpu = self._current(self._c)
            return self._resume(vcpu, _resume_address(rest, head == "S"), alone=vcpu)
        if head == "v":
            return self._v(rest)
        if head in "qQ":
            return self._query(text)
        return b""

    def _query(self, text: str) -> bytes:
        if text.startswith("qSupported"):
            return _SUPPORTED
        if text == "QStartNoAckMode":
            self.no_ack = True
            return b"OK"
        if text.startswith("qXfer:features:read:"):
            annex, _, span = text[len("qXfer:features:read:") :].partition(":")
            if annex != "target.xml":
                return b"E00"
            offset, length = (int(x, 16) for x in span.split(","))
            chunk = self._xml[offset : offset + min(length, MAX_MEMORY)]
            return (b"l" if offset + len(chunk) >= len(self._xml) else b"m") + chunk
        if text == "qfThreadInfo":
            threads = self._dbg.threads()
            return ("m" + ",".join(f"{v + 1:x}" for v in threads)).encode() if threads else b"l"
        if text == "qsThreadInfo":
            return b"l"
        if text == "qC":
            vcpu = self._current(self._g)
            return f"QC{vcpu + 1:x}".encode() if vcpu is not None else b""
        if text.startswith("qThreadExtraInfo,"):
            vcpu = _thread(text.split(",", 1)[1])
            if vcpu not in self._dbg.threads():
                return E_BAD
            state = "" if vcpu in self._dbg.running_threads() else ", off"
            return f"vCPU {vcpu}{state}".encode().hex().encode()
        if text.startswith("qAttached"):
            return b"1"  # a VM that was running: gdb detaches, not kills, when it quits
        if text.startswith("qSymbol"):
            return b"OK"
        return b""

    def _v(self, text: str) -> bytes | None:
        if text == "Cont?":
            return b"vCont;c;C;s;S"
        if text.startswith("Cont;"):
            return self._vcont(text[len("Cont;") :])
        if text.startswith("Kill"):
            self._kill_vm()
            return b"OK"
        if text == "MustReplyEmpty":
            return b""
        return b""

    # -- registers ------------------------------------------------------------------------
    def _read_all(self) -> bytes:
        vcpu = self._current(self._g)
        values = None if vcpu is None else self._dbg.read_registers(vcpu, self._registers)
        return E_BAD if values is None else b"".join(values).hex().encode()

    def _write_all(self, rest: str) -> bytes:
        vcpu = self._current(self._g)
        data = bytes.fromhex(rest)
        if vcpu is None:
            return E_BAD
        offset = 0
        for number, reg in enumerate(self._dbg.arch.registers):
            size = reg.bits // 8
            if offset + size > len(data):
                break
            self._dbg.write_register(vcpu, number, data[offset : offset + size])
            offset += size
        return b"OK"

    def _read_one(self, rest: str) -> bytes:
        vcpu = self._current(self._g)
        number = int(rest, 16)
        if vcpu is None or number not in self._registers:
            return E_BAD
        values = self._dbg.read_registers(vcpu, [number])
        return E_BAD if values is None else values[0].hex().encode()

    def _write_one(self, rest: str) -> bytes:
        vcpu = self._current(self._g)
        number_text, _, value = rest.partition("=")
        number = int(number_text, 16)
        if vcpu is None or number not in self._registers:
            return E_BAD
        return b"OK" if self._dbg.write_register(vcpu, number, bytes.fromhex(value)) else E_BAD

    # -- memory ---------------------------------------------------------------------------
    def _read_memory(self, rest: str) -> bytes:
        address, length = _address_length(rest)
        vcpu = self._current(self._g)
        data = None
        if vcpu is not None:
            data = self._dbg.read_memory(vcpu, address, min(length, MAX_MEMORY))
        return E_FAULT if data is None else data.hex().encode()

    def _write_memory(self, rest: str) -> bytes:
        where, _, hexdata = rest.partition(":")
        address, length = _address_length(where)
        data = bytes.fromhex(hexdata)
        return self._store(address, length, data)

    def _write_binary(self, raw: bytes) -> bytes:
        where, sep, data = raw.partition(b":")
        if not sep:
            raise BadPacket("X without data")
        address, length = _address_length(where.decode("latin-1"))
        return self._store(address, length, data)

    def _store(self, address: int, length: int, data: bytes) -> bytes:
        if len(data) != length:
            return E_BAD
        vcpu = self._current(self._g)
        if not length:
            return b"OK"
        stored = vcpu is not None and self._dbg.write_memory(vcpu, address, data)
        return b"OK" if stored else E_FAULT

    # -- breakpoints, threads, running ----------------------------------------------------
    def _point(self, insert: bool, rest: str) -> bytes:
        kind_text, address_text, length_text = rest.split(";")[0].split(",")
        kind = int(kind_text)
        if kind not in (0, 1, 2, 3, 4):
            return b""  # a type pvkit does not have
        address, length = int(address_text, 16), int(length_text, 16)
        ok = (self._dbg.insert if insert else self._dbg.remove)(kind, address, length)
        return b"OK" if ok or not insert else E_BAD

    def _set_thread(self, rest: str) -> bytes:
        op, thread = rest[:1], _thread(rest[1:])
        if op not in ("g", "c"):
            return E_BAD
        if thread is not None and thread >= 0 and thread not in self._dbg.threads():
            return E_BAD
        choice = None if thread is None or thread < 0 else thread
        if op == "g":
            self._g = choice
        else:
            self._c = choice
        return b"OK"

    def _current(self, chosen: int | None) -> int | None:
        threads = self._dbg.threads()
        if chosen in threads:
            return chosen
        return self._stop_thread(self._stop)

    def _resume(
        self, step: int | None, address: int | None, alone: int | None = None
    ) -> bytes | None:
        if address is not None:
            vcpu = self._current(self._c)
            if vcpu is None or not self._set_pc(vcpu, address):
                return E_BAD
        if step is not None and step not in self._dbg.running_threads():
            return self.stop_reply()  # an off vCPU does not step: it stays where it is
        self._stop = None
        self._dbg.resume(step, None if alone is None else [alone])
        return None

    def _vcont(self, actions: str) -> bytes | None:
        step: int | None = None
        named: list[int] = []
        everyone = False
        for action in actions.split(";"):
            verb, _, thread_text = action.partition(":")
            if not verb or verb[0] not in "cCsS":
                return E_BAD  # t (stop) and r (range step) are not offered
            thread = _thread(thread_text) if thread_text else None
            if thread is None or thread < 0:
                if verb[0] in "sS" and step is None:
                    step = self._current(self._c)
                    if step is not None:
                        named.append(step)
                else:
                    everyone = True
                continue
            if thread not in self._dbg.threads():
                continue  # gone since gdb last looked: nothing to resume
            if verb[0] in "sS" and step is None:
                step = thread
            named.append(thread)
        running = self._dbg.running_threads()
        if step is not None and step not in running:
            return self.stop_reply()  # an off vCPU does not step: it stays where it is
        named = [v for v in named if v in running]
        if not everyone and not named:
            return self.stop_reply()  # nothing that was asked to run can
        self._stop = None
        self._dbg.resume(step, None if everyone else named)
        return None

    def _set_pc(self, vcpu: int, address: int) -> bool:
        for number, reg in enumerate(self._dbg.arch.registers):
            if reg.type == "code_ptr" and reg.name in ("pc", "rip"):
                size = reg.bits // 8
                return self._dbg.write_register(vcpu, number, address.to_bytes(size, "little"))
        return False

    def _kill_vm(self) -> bytes | None:
        self.detached = True
        self._kill()
        return None

    def _detach(self) -> bytes:
        self.detached = True
        return b"OK"


def _thread(text: str) -> int | None:
    """gdb's thread id (hex; -1 all, 0 any; `p<pid>.<tid>` too) as a vCPU index: -1
    for all, None for any."""
    text = text.strip()
    if text.startswith("p") and "." in text:
        text = text.split(".", 1)[1]
    if text == "-1":
        return -1
    number = int(text, 16)
    if number < 0:
        raise BadPacket("negative thread id")
    return None if number == 0 else number - 1


def _address_length(text: str) -> tuple[int, int]:
    address, length = text.split(",")
    a, n = int(address, 16), int(length, 16)
    if a < 0 or n < 0 or a >= 1 << 64:
        raise BadPacket("address out of range")
    return a, n


def _resume_address(rest: str, with_signal: bool) -> int | None:
    """`c[addr]`, `C sig[;addr]` (the signal is not delivered: there are no signals here)."""
    if with_signal:
        signal, _, rest = rest.partition(";")
        int(signal, 16)  # ValueError (E01) without one
    return int(rest, 16) if rest else None
