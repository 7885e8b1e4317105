"""`pvkit run --gdb tcp::PORT`: the gdb stub's TCP side, one client at a time.

As QEMU's gdbstub does, a client that connects stops the VM (it is told where each vCPU
stands), and one that detaches or goes away leaves it running again with every breakpoint
and watchpoint gone. With `freeze` (-S) the VM waits for a client before its first
instruction. Nothing a client sends, and no way it leaves, raises in the host.
"""

from __future__ import annotations

import select
import socket
import sys
import threading
from collections.abc import Callable

from pvkit.backends.debug_port import ArchRegisters
from pvkit.debug.debugger import ATTACH, FREEZE, Debugger
from pvkit.debug.packets import Ack, Interrupt, Packet, PacketReader, frame
from pvkit.debug.session import E_BAD, Session
from pvkit.machine.control import Stop, VmControl

DEFAULT_HOST = "127.0.0.1"
_POLL_S = 0.02  # how often a running target is looked at while gdb waits for a stop
_READ = 65536


class AddressError(ValueError):
    """A --gdb device pvkit cannot listen on (one sentence)."""


def parse_address(spec: str) -> tuple[str, int]:
    """QEMU's spellings: `tcp::PORT`, `tcp:HOST:PORT`, also `:PORT` and `PORT`."""
    text = spec.strip()
    if text.startswith("tcp:"):
        text = text[len("tcp:") :]
    elif not text or not (text[0] == ":" or text.isdigit()):
        raise AddressError(f"--gdb {spec!r}: give tcp::PORT or tcp:HOST:PORT (only TCP is served)")
    host, _, port_text = text.rpartition(":")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise AddressError(f"--gdb {spec!r}: the port must be a number from 0 to 65535")
    return host or DEFAULT_HOST, int(port_text)


class GdbServer:
    def __init__(
        self,
        control: VmControl,
        arch: ArchRegisters,
        address: tuple[str, int],
        kill: Callable[[], None],
        freeze: bool = False,
    ):
        """Listens at once (OSError if it cannot); serves from `start` on. `kill()`
        stops the VM (gdb's `kill`); `freeze` holds it before its first instruction."""
        self._control = control
        self._debugger = Debugger(control, arch)
        self._kill = kill
        self._listener = socket.create_server(address)
        self._listener.settimeout(0.1)
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        if freeze:
            self._debugger.pause(FREEZE, vcpu=0)
        self._status = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="gdb-stub", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def finish(self, status: int) -> None:
        """The VM has ended with exit `status`: a client waiting for a stop is told
        (W), the connection and the listener close."""
        self._status = status & 0xFF
        self._control.end()
        self._done.set()
        self._thread.join(2.0)
        self._listener.close()

    # -- the stub's thread --------------------------------------------------------------
    def _serve(self) -> None:
        while not self._done.is_set():
            try:
                conn, _peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                with conn:
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    self._client(conn)
            except OSError:
                pass  # the client went away mid-write: as if it had disconnected
            except Exception as exc:  # a stub bug must not end the VM
                print(f"pvkit: gdb stub: internal error ({exc!r}); client dropped", file=sys.stderr)
            finally:
                self._leave()

    def _client(self, conn: socket.socket) -> None:
        dbg = self._debugger
        self._debugger.pause(ATTACH)
        stop = self._wait_stop()
        if stop is None:
            return  # the VM ended before it stood still
        session = Session(dbg, self._kill)
        session.stopped(stop)
        reader = PacketReader()
        running = False
        last = b""
        while not session.detached:
            if running:
                stop = dbg.wait(0)
                if stop is not None:
                    session.stopped(stop)
                    running = False
                    last = self._send(conn, session, session.stop_reply())
                elif self._control.ended:
                    self._send(conn, session, f"W{self._status:02x}".encode())
                    return
            elif self._control.ended:
                return
            readable, _, _ = select.select([conn], [], [], _POLL_S)
            if not readable:
                continue
            data = conn.recv(_READ)
            if not data:
                return  # the client closed the connection
            for event in reader.feed(data):
                if isinstance(event, Interrupt):
                    if running:
                        dbg.interrupt()
                elif isinstance(event, Ack):
                    if not event.positive and last and not session.no_ack:
                        conn.sendall(last)  # gdb asks for the last packet again
                elif not event.valid:
                    if not session.no_ack:
                        conn.sendall(b"-")
                else:
                    if not session.no_ack:
                        conn.sendall(b"+")
                    reply = self._answer(session, event, running)
                    if session.detached:
                        if reply is not None:
                            self._send(conn, session, reply)
                        return
                    if reply is None:
                        running = True
                    else:
                        last = self._send(conn, session, reply)

    def _answer(self, session: Session, packet: Packet, running: bool) -> bytes | None:
        if running:
            return E_BAD  # all-stop: while it runs only an interrupt means anything
        return session.handle(packet.payload)

    def _send(self, conn: socket.socket, session: Session, payload: bytes) -> bytes:
        data = frame(payload)
        conn.sendall(data)
        return data

    def _wait_stop(self) -> Stop | None:
        while not self._control.ended:
            stop = self._debugger.wait(0.1)
            if stop is not None:
                return stop
        return None

    def _leave(self) -> None:
        """The client is gone: no breakpoint or watchpoint stays, and the VM runs."""
        dbg = self._debugger
        if self._control.ended:
            return
        if not dbg.halted:
            self._debugger.pause(ATTACH)
            if self._wait_stop() is None:
                return
        dbg.clear()
        dbg.resume()
