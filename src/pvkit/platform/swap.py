"""What a board does when a vCPU touches a page the host does not hold.

The host fetches the page (machine/residency.py). Meanwhile either the guest is told
"page not present" by a PageNotifier service (asynchronous page faults) and runs another
task, or the vCPU waits, runnable but off its host CPU, which the scheduler counts as
stolen time. Fetches complete when the hypervisor clock passes their time: a wall-clock
deadline fires then; with deterministic time the vCPU's next entry (or its WFI's
deadline) notices. A completed page is present for every vCPU, and each vCPU told "page
not present" for it is told "page ready".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from functools import partial

from pvkit.backends.base import VcpuExit
from pvkit.machine.deadlines import DeadlineThread
from pvkit.machine.memory import Region
from pvkit.machine.residency import HostResidency, SwapSpec
from pvkit.machine.scheduling import Scheduler
from pvkit.services.base import PageNotifier, Service
from pvkit.trace.events import TraceHub, VmEvent


def swap_controller(
    spec: SwapSpec | None,
    ram: Region,
    scheduler: Scheduler,
    services: Sequence[Service],
    trace: TraceHub,
    deadlines: DeadlineThread | None,
) -> SwapController | None:
    """A board's controller for `spec` over `ram`, or None when no page is ever absent."""
    if spec is None or not spec.active:
        return None
    return SwapController(
        HostResidency(ram.base, ram.size, spec), scheduler, services, trace, deadlines
    )


class SwapController:
    def __init__(
        self,
        residency: HostResidency,
        scheduler: Scheduler,
        services: Sequence[Service],
        trace: TraceHub,
        deadlines: DeadlineThread | None,
    ):
        """`deadlines` None: deterministic time (completions are polled at entries)."""
        self.residency = residency
        self._scheduler = scheduler
        notifiers = [s for s in services if isinstance(s, PageNotifier)]
        self.notifier: PageNotifier | None = notifiers[0] if notifiers else None
        self._trace = trace
        self._deadlines = deadlines
        self._lock = threading.Lock()
        self._told: dict[int, set[int]] = {}  # vcpu -> pages it was told about

    def boot(self) -> None:
        """First boot and every reset: the spec's pages are absent again."""
        self.residency.apply()
        with self._lock:
            self._told.clear()

    def on_absent(self, vcpu: int, exit_: VcpuExit) -> int | None:
        """The VM's PAGE_ABSENT decision: None (the guest was told, or the page is here
        already) or the time `vcpu` waits until."""
        residency = self.residency
        address = exit_.address or 0
        page = residency.page_of(address)
        if page is None:
            return None
        now = self._scheduler.now_ns(vcpu)
        ready = residency.touch(page, now)
        if ready <= now:
            self._complete(now)
            return None
        self._arm(ready)
        notifier = self.notifier
        if notifier is not None:
            token = notifier.page_not_present(vcpu, page, exit_.user_mode, exit_.interrupts_masked)
            if token is not None:
                with self._lock:
                    self._told.setdefault(vcpu, set()).add(page)
                self._note("apf_not_present", vcpu, address=f"{address:#x}", token=token)
                return None
        residency.count_wait()
        return ready

    def poll(self, vcpu: int) -> None:
        """Entry hook: complete the fetches whose time `vcpu`'s clock has passed."""
        if self.residency.next_ready_ns() is not None:
            self._complete(self._scheduler.now_ns(vcpu))

    def next_deadline(self, vcpu: int) -> int | None:
        """Deterministic time: when a fetch `vcpu` was told about completes (its WFI
        ends then, so the "page ready" arrives)."""
        with self._lock:
            pages = list(self._told.get(vcpu, ()))
        if not pages:
            return None
        times = [t for p in pages if (t := self.residency.ready_ns(p)) is not None]
        return min(times, default=None)

    def can_wake(self, vcpu: int) -> bool:
        with self._lock:
            return bool(self._told.get(vcpu))

    def _complete(self, now: int) -> None:
        for page in self.residency.complete_due(now):
            with self._lock:
                for told in self._told.values():
                    told.discard(page)
            if self.notifier is not None:
                for vcpu, token in self.notifier.page_ready(page):
                    self._note("apf_ready", vcpu, page=f"{self.residency.address_of(page):#x}",
                               token=token)  # fmt: skip

    def _arm(self, ready: int) -> None:
        if self._deadlines is not None:
            self._deadlines.arm(("swap", ready), ready, partial(self._complete, ready))

    def _note(self, kind: str, vcpu: int, **fields: object) -> None:
        if self._trace.active:
            self._trace.event(VmEvent(kind, time.perf_counter_ns(), vcpu, dict(fields)))
