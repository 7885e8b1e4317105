"""`pvkit monitor PATH COMMAND [ARG]`: one command to a running VM's monitor, its reply.

The client side of protocol.py: read the greeting, negotiate, send the command, read
lines until its reply (skipping anything else a QMP server may send, such as events).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from pvkit.monitor.protocol import MAX_LINE, encode

REPLY_TIMEOUT_S = 600.0  # a save of a large guest takes a while


class ClientError(Exception):
    """The monitor could not be reached or did not answer (one sentence)."""


def call(
    path: Path, command: str, arguments: dict[str, Any], timeout: float = REPLY_TIMEOUT_S
) -> dict[str, Any]:
    """The reply to `command`: a map with "return" or "error"."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except FileNotFoundError:
            raise ClientError(f"no monitor socket at {path}") from None
        except ConnectionRefusedError:
            raise ClientError(f"nothing listens at {path} (has the VM ended?)") from None
        except OSError as exc:
            raise ClientError(f"cannot connect to {path}: {exc.strerror or exc}") from None
        lines = _Lines(sock)
        try:
            if "QMP" not in lines.message():
                raise ClientError(f"{path} is not a monitor: it sent no greeting")
            _check(_request(sock, lines, "qmp_capabilities", {}), "qmp_capabilities")
            return _request(sock, lines, command, arguments)
        except TimeoutError:
            raise ClientError(f"the monitor at {path} did not answer in {timeout:g} s") from None
        except OSError as exc:
            raise ClientError(f"the monitor at {path} went away ({exc.strerror or exc})") from None


def _request(
    sock: socket.socket, lines: _Lines, command: str, arguments: dict[str, Any]
) -> dict[str, Any]:
    message: dict[str, Any] = {"execute": command}
    if arguments:
        message["arguments"] = arguments
    sock.sendall(encode(message))
    while True:
        answer = lines.message()
        if "return" in answer or "error" in answer:
            return answer


def _check(answer: dict[str, Any], command: str) -> None:
    if "error" in answer:
        raise ClientError(f"the monitor refused {command}: {json.dumps(answer['error'])}")


class _Lines:
    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._buffer = b""

    def message(self) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_LINE * 16:
                raise ClientError("the monitor sent a line too long to be a reply")
            data = self._sock.recv(65536)
            if not data:
                raise ClientError("the monitor closed the connection before it replied")
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            value = json.loads(line)
        except ValueError:
            raise ClientError("the monitor sent a line that is not JSON") from None
        if not isinstance(value, dict):
            raise ClientError("the monitor sent a line that is not a JSON object")
        return value
