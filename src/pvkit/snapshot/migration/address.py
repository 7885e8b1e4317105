"""`tcp:HOST:PORT`, the migration address QEMU's `-incoming` and `migrate` take.

An empty HOST on the listening side means every interface (`tcp::4444`), as in QEMU;
an IPv6 HOST is written in brackets (`tcp:[::1]:4444`). PORT 0 on the listening side
asks the system for a free port (the destination prints the one it got).
"""

from __future__ import annotations

from dataclasses import dataclass


class AddressError(ValueError):
    """An address pvkit cannot use (one sentence)."""


@dataclass(frozen=True)
class TcpAddress:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"


def parse(spec: str, option: str, listening: bool = False) -> TcpAddress:
    kind, sep, rest = spec.partition(":")
    if kind != "tcp" or not sep:
        raise AddressError(f"{option} {spec!r}: give tcp:HOST:PORT (only TCP is served)")
    host, sep, port_text = rest.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise AddressError(f"{option} {spec!r}: the port must be a number from 0 to 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_text)
    if not listening and (not host or port == 0):
        raise AddressError(f"{option} {spec!r}: give the destination's host and port")
    return TcpAddress(host, port)
