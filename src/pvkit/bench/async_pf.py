"""What asynchronous page faults buy: the apf example guests with and without the service.

Each guest walks a 4 MiB region that starts absent on the host (1 ms per page to bring
back) with four tasks while a fifth computes. With deterministic time a run is exact, so
one sample says it: the guest's own time to finish the walks, and the compute task's rounds
per second of it. Without async page faults each page is a stall of the whole vCPU; with
them the other tasks run meanwhile and several fetches overlap.
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from dataclasses import dataclass

from pvkit.bench.probes import GUESTS, BenchError

LATENCY_MS = 1
LIMIT_S = 300.0
GUEST_REGIONS = {  # the work region each example walks (its source names it)
    "x86": (GUESTS / "apf-x86.elf", "0x4000000+4M"),
    "arm64": (GUESTS / "apf.Image", "0x48000000+4M"),
}
_DONE = re.compile(r"^apf: done in (\d+) us", re.MULTILINE)
_ROUNDS = re.compile(r"^apf: compute task ran (\d+) rounds", re.MULTILINE)
_ON = re.compile(r"^apf: async page faults on", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class ApfRun:
    guest_us: int  # the guest's own time from start to the end of the walks
    rounds: int  # what the compute task got done meanwhile

    @property
    def rounds_per_s(self) -> float:
        return self.rounds / (self.guest_us / 1e6)


@functools.cache  # deterministic: a second run would repeat the first to the nanosecond
def run_guest(arch: str, async_pf: bool) -> ApfRun:
    image, region = GUEST_REGIONS[arch]
    cmd = [
        sys.executable, "-m", "pvkit", "run", str(image), "--deterministic",
        "--swap-out", region, "--swap-latency-ms", str(LATENCY_MS),
    ]  # fmt: skip
    if not async_pf:
        cmd += ["--disable", "async-pf"]
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=LIMIT_S, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"the {arch} apf guest did not finish in {LIMIT_S:.0f} s") from None
    out = done.stdout
    finished, rounds = _DONE.search(out), _ROUNDS.search(out)
    if done.returncode != 0 or finished is None or rounds is None or "FAILED" in out:
        raise BenchError(f"the {arch} apf guest failed (exit {done.returncode}): {out[-300:]}")
    if bool(_ON.search(out)) != async_pf:
        raise BenchError(f"the {arch} apf guest did not see async page faults as expected")
    return ApfRun(int(finished.group(1)), int(rounds.group(1)))


def available(arch: str) -> bool:
    return GUEST_REGIONS[arch][0].exists()
