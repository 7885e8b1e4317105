"""`--swap-out` / `--swap-latency-ms`: host memory that can be absent, and what it cost."""

from __future__ import annotations

import math
from typing import Protocol

from pvkit.cli.options import fail, say
from pvkit.machine.residency import HostResidency, SwapSpec, parse_swap_out
from pvkit.services.async_pf import AsyncPfCore

MAX_LATENCY_MS = 3_600_000.0  # an hour: anything longer is a typo, not a disk


class SwapSource(Protocol):
    residency: HostResidency
    notifier: object


def swap_spec(swap_out: list[str], latency_ms: float) -> SwapSpec | None:
    """The spec the options describe, None without --swap-out; bad text exits with one
    sentence."""
    if not math.isfinite(latency_ms) or not 0 <= latency_ms <= MAX_LATENCY_MS:
        raise fail(f"--swap-latency-ms {latency_ms} is not between 0 and {MAX_LATENCY_MS:.0f}")
    if not swap_out:
        return None
    fraction = 0.0
    ranges = []
    for text in swap_out:
        try:
            parsed = parse_swap_out(text)
        except ValueError as exc:
            raise fail(str(exc)) from None
        if isinstance(parsed, tuple):
            ranges.append(parsed)
        else:
            fraction = max(fraction, parsed)
    return SwapSpec(int(latency_ms * 1e6), fraction, tuple(ranges))


def print_swap_stats(swap: SwapSource | None) -> None:
    """--stats: the host's ground truth about absent pages and async page faults (plain
    lines on stderr, never wrapped, for scripts and tests)."""
    if swap is None:
        return
    s = swap.residency.stats
    say(
        f"pvkit: swap absent_at_boot={s.absent_at_boot} touched={s.touched} "
        f"fetched={s.fetched} waits={s.waits}"
    )
    notifier = swap.notifier
    if isinstance(notifier, AsyncPfCore):
        a = notifier.stats
        say(
            f"pvkit: async-pf not_present={a.not_present} ready={a.ready} "
            f"wake_all={a.wake_all} acks={a.acks} dropped={a.dropped}"
        )
