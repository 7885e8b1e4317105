"""`pvkit run --monitor unix:PATH`: the monitor's socket, JSON lines, several clients.

Each client gets the greeting, negotiates capabilities, then sends requests, one per
line, and gets one reply line each. Nothing a client sends and no way it leaves raises in
the host or stops the VM: a line that is not a request, too long, or an unknown command
gets an error reply; a client that goes away mid-command leaves the command to finish
(a save is written and the VM resumed) and its reply unsent. A client leaving a stopped
VM leaves it stopped, as QMP does.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import stat
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from pvkit.monitor.commands import Action, Monitor
from pvkit.monitor.protocol import (
    MAX_LINE,
    NOT_FOUND,
    CommandError,
    Request,
    error,
    greeting,
    parse,
    reply,
)

MAX_CLIENTS = 16
_POLL_S = 0.1  # how often a waiting thread looks whether the run is over
_READ = 65536
_OPTIONS = {"server", "server=on", "nowait", "wait=off"}  # QEMU's -qmp spellings, implied


class AddressError(ValueError):
    """A --monitor device pvkit cannot serve (one sentence)."""


def parse_address(spec: str) -> Path:
    """`unix:PATH` (QEMU's `,server=on,wait=off` may follow: they are what pvkit does)."""
    kind, sep, rest = spec.partition(":")
    if kind != "unix" or not sep:
        raise AddressError(f"--monitor {spec!r}: give unix:PATH (only a Unix socket is served)")
    path, *options = rest.split(",")
    bad = [o for o in options if o not in _OPTIONS]
    if bad:
        raise AddressError(f"--monitor {spec!r}: option {bad[0]!r} is not one pvkit knows")
    if not path:
        raise AddressError(f"--monitor {spec!r}: give the socket's path after unix:")
    return Path(path)


def listen(path: Path) -> socket.socket:
    """A listening socket at `path`; a stale socket file there (its VM is gone) is
    replaced. AddressError if `path` cannot be used."""
    if path.is_symlink() or path.exists():
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise AddressError(f"--monitor {path}: the file exists and is not a socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()  # nobody listens: left behind by a run that ended
            else:
                raise AddressError(f"--monitor {path}: another monitor listens there")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)  # the socket controls the VM: its owner only
        sock.listen(MAX_CLIENTS)
    except OSError as exc:
        sock.close()
        raise AddressError(
            f"--monitor {path}: cannot listen there ({exc.strerror or exc})"
        ) from None
    return sock


@dataclass
class _Client:
    conn: socket.socket
    negotiated: bool = False


class MonitorServer:
    def __init__(self, monitor: Monitor, path: Path):
        """Listens at once (AddressError if it cannot); serves from `start` on."""
        self.monitor = monitor
        self.path = path
        self._listener = listen(path)
        self._inode = os.stat(path).st_ino
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._clients: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._accept, name="monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def finish(self) -> None:
        """The VM has ended: clients are disconnected, the socket file goes."""
        self.monitor.vm.control.end()
        self._done.set()
        self._thread.join(2.0)
        with self._lock:
            clients = list(self._clients)
        for conn in clients:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(2.0)
        self._listener.close()
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self._inode:
                self.path.unlink()

    # -- threads ------------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._done.is_set():
            readable, _, _ = select.select([self._listener], [], [], _POLL_S)
            if not readable:
                continue
            try:
                conn, _peer = self._listener.accept()
            except OSError:
                continue
            with self._lock:
                full = len(self._clients) >= MAX_CLIENTS
                if not full:
                    self._clients.add(conn)
            if full:
                with contextlib.suppress(OSError), conn:
                    busy = CommandError(f"the monitor serves {MAX_CLIENTS} clients at most")
                    conn.sendall(error(None, busy))
                continue
            t = threading.Thread(target=self._serve, args=(conn,), name="monitor-client")
            t.daemon = True
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.sendall(greeting())
                self._lines(_Client(conn))
        except OSError:
            pass  # the client went away mid-reply: as if it had disconnected
        except Exception as exc:  # a monitor bug must not end the VM
            print(f"pvkit: monitor: internal error ({exc!r}); client dropped", file=sys.stderr)
        finally:
            with self._lock:
                self._clients.discard(conn)

    def _lines(self, client: _Client) -> None:
        conn = client.conn
        buffer = bytearray()
        skipping = False  # inside a line that was too long: up to its newline
        while not self._done.is_set():
            readable, _, _ = select.select([conn], [], [], _POLL_S)
            if not readable:
                continue
            data = conn.recv(_READ)
            if not data:
                return
            buffer += data
            while (end := buffer.find(b"\n")) >= 0:
                line = bytes(buffer[:end])
                del buffer[: end + 1]
                if skipping:
                    skipping = False
                elif len(line) > MAX_LINE:
                    conn.sendall(error(None, _too_long()))
                elif line.strip():
                    self._answer(client, line)
            if len(buffer) > MAX_LINE:
                if not skipping:
                    conn.sendall(error(None, _too_long()))
                skipping = True
                buffer.clear()

    def _answer(self, client: _Client, line: bytes) -> None:
        action: Action | None = None
        try:
            request = parse(line)
        except CommandError as exc:
            client.conn.sendall(error(None, exc))
            return
        try:
            if request.command == "qmp_capabilities":
                value = self._negotiate(client, request)
            elif not client.negotiated:
                raise CommandError(
                    "capabilities are not negotiated yet: send qmp_capabilities first", NOT_FOUND
                )
            else:
                value, action = self.monitor.execute(request)
        except CommandError as exc:
            client.conn.sendall(error(request, exc))
            return
        try:
            client.conn.sendall(reply(request, value))
        finally:
            if action is not None:
                action()  # even if the client has gone (quit)

    def _negotiate(self, client: _Client, request: Request) -> dict[str, object]:
        args = request.arguments
        if client.negotiated:
            raise CommandError("capabilities are negotiated already", NOT_FOUND)
        if set(args) - {"enable"} or args.get("enable", []) != []:
            raise CommandError("pvkit's monitor offers no optional capabilities")
        client.negotiated = True
        return {}


def _too_long() -> CommandError:
    return CommandError(f"a request must be at most {MAX_LINE} bytes long")
