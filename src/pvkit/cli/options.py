"""Option parsing shared by the verbs that build a VM."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

from pvkit.services.profiles import PROFILES, HostProfile

_SIZE = re.compile(r"^(\d+)([KMG]?)i?B?$", re.IGNORECASE)
_UNITS = {"": 1 << 20, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
MAX_TIMEOUT_S = 1e9  # about 31 years; the host's waits cannot take much more (TIMEOUT_MAX)
MIN_SLICE_MS = 0.001
MAX_SLICE_MS = 60_000.0
MAX_HOST_CPUS = 4096


def parse_size(text: str) -> int:
    """`256M`, `1G`, `65536K`; a bare number means MiB, as in QEMU's -m."""
    m = _SIZE.match(text.strip())
    if not m:
        raise fail(f"--mem {text!r} is not a size such as 256M or 1G")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def parse_timeout(seconds: float | None) -> float | None:
    """`--timeout`: None (no limit), or a finite number of seconds above 0."""
    if seconds is None or (math.isfinite(seconds) and 0 < seconds <= MAX_TIMEOUT_S):
        return seconds
    raise fail(
        f"--timeout {seconds:g}: give a number of seconds above 0 and at most "
        f"{MAX_TIMEOUT_S:.0f}, or leave it out for no limit"
    )


def parse_slice_ms(ms: float) -> int:
    """`--slice-ms` in ms to the scheduler's slice in ns (1 µs to a minute)."""
    if math.isfinite(ms) and MIN_SLICE_MS <= ms <= MAX_SLICE_MS:
        return max(1000, int(ms * 1e6))
    raise fail(
        f"--slice-ms {ms:g}: a time slice must be at least 1 µs ({MIN_SLICE_MS:g}) and at "
        f"most {MAX_SLICE_MS:.0f} ms"
    )


def parse_host_cpus(count: int | None) -> int | None:
    """`--host-cpus`: None (one per vCPU) or 1..MAX_HOST_CPUS."""
    if count is None or 1 <= count <= MAX_HOST_CPUS:
        return count
    raise fail(f"--host-cpus {count} must be at least 1 and at most {MAX_HOST_CPUS}")


def parse_profile(name: str) -> HostProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise fail(
            f"--profile {name!r}: unknown profile; choose one of {', '.join(PROFILES)}"
        ) from None


class VerbExit(Exception):
    """A verb ends with this exit status; what it had to say is already on stderr."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def say(line: str) -> None:
    """One line on stderr, flushed, never wrapped (as typer.echo, without typer)."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def fail(message: str, code: int = 2) -> VerbExit:
    say(f"pvkit: {message}")
    return VerbExit(code)


def write_file(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a failure leaves nothing half-written."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as exc:
        raise fail(f"cannot write {path}: {exc.strerror}") from None
