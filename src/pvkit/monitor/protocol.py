"""The monitor's wire format: QMP's JSON messages, one per line.

A request is `{"execute": NAME, "arguments": {...}, "id": ANY}` ("arguments" and "id"
optional); the reply is `{"return": VALUE}` or `{"error": {"class": CLASS, "desc":
SENTENCE}}`, with the request's "id" when it had one. On connecting a client gets a
greeting and must send `qmp_capabilities` first. (The QEMU Machine Protocol
Specification, 2.2 "Server Greeting", 2.3 "Issuing Commands", 2.4 "Commands Responses"
and 4 "Capabilities Negotiation".) Everything a client sends is untrusted: a line
that is not such a request gets an error reply, never an exception.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pvkit import __version__

MAX_LINE = 64 << 10  # a longer request is refused (and skipped up to its newline)

# QMP's error classes (the ones pvkit uses)
GENERIC = "GenericError"
NOT_FOUND = "CommandNotFound"

_MEMBERS = {"execute", "arguments", "id"}


class CommandError(Exception):
    """A request that cannot be carried out: its QMP class and one sentence."""

    def __init__(self, desc: str, error_class: str = GENERIC):
        super().__init__(desc)
        self.error_class = error_class
        self.desc = desc


@dataclass(frozen=True)
class Request:
    command: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: Any = None
    has_id: bool = False


def greeting() -> bytes:
    major, minor, micro = (int(p) for p in __version__.split(".")[:3])
    version = {"qemu": {"major": major, "minor": minor, "micro": micro}, "package": "pvkit"}
    return encode({"QMP": {"version": version, "capabilities": []}})


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(", ", ": ")).encode() + b"\n"


def parse(line: bytes) -> Request:
    """One request line; CommandError if it is not a well-formed request."""
    try:
        message = json.loads(line)
    except (ValueError, RecursionError):  # bad JSON, bad UTF-8, too deep, huge numbers
        raise CommandError("the request is not valid JSON") from None
    if not isinstance(message, dict):
        raise CommandError("a request must be a JSON object")
    unexpected = sorted(set(message) - _MEMBERS)
    if unexpected:
        raise CommandError(f"the request member {unexpected[0][:64]!r} is unexpected")
    command = message.get("execute")
    if not isinstance(command, str):
        raise CommandError("the request member 'execute' must be a string")
    arguments = message.get("arguments", {})
    if not isinstance(arguments, dict):
        raise CommandError("the request member 'arguments' must be an object")
    return Request(command, arguments, message.get("id"), "id" in message)


def reply(request: Request | None, value: Any) -> bytes:
    return encode(_with_id(request, {"return": value}))


def error(request: Request | None, exc: CommandError) -> bytes:
    return encode(_with_id(request, {"error": {"class": exc.error_class, "desc": exc.desc}}))


def _with_id(request: Request | None, message: dict[str, Any]) -> dict[str, Any]:
    if request is not None and request.has_id:
        message["id"] = request.id
    return message


def string_argument(request: Request, name: str) -> str:
    """The one string parameter `name` a command takes (none other)."""
    args = request.arguments
    others = sorted(set(args) - {name})
    if others:
        raise CommandError(f"parameter {others[0][:64]!r} is unexpected")
    if name not in args:
        raise CommandError(f"parameter {name!r} is missing")
    value = args[name]
    if not isinstance(value, str) or not value:
        raise CommandError(f"parameter {name!r} must be a non-empty string")
    return value


def no_arguments(request: Request) -> None:
    if request.arguments:
        name = sorted(request.arguments)[0]
        raise CommandError(f"parameter {name[:64]!r} is unexpected")
