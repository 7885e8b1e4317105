"""Asynchronous page faults: "page not present" / "page ready" instead of a stalled vCPU.

The API is one (seed 000): per vCPU, a guest-owned 64-byte block, tokens, one notification
in flight until the guest acknowledges it, a queue behind it, a wake-all token on enable.
`AsyncPfCore` holds that; each ABI says how the guest enables it and how it is signalled.
Here, arm64: one fast SMC32 call in the vendor-hypervisor range with the sub-function in
W1, both notifications on one per-vCPU PPI (the PPI-only form of the arm64 series posted
to the KVM list, which never merged). x86 speaks KVM's MSRs (async_pf_x86.py).
docs/services/async-pf.md is the guest's view.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import asdict, dataclass, field

from pvkit.abi.smccc import SmcccReturn
from pvkit.hypercall.call import Call
from pvkit.hypercall.namespace import Abi, Function, IdRange
from pvkit.hypercall.vendor_numbers import pvkit_number
from pvkit.services.base import Service
from pvkit.services.vendor_hyp import VENDOR_SMC32
from pvkit.snapshot.state import Fields, int_keys

# Its number in the vendor range comes from pvkit's assignments there (not KVM's: the
# series' own numbers 1 and 2 are KVM's PTP and a pKVM function today).
ASYNC_PF_FUNCTION = pvkit_number("async-pf")
VERSION = 0x01_00_00  # 1.0.0: bits 23:16 major, 15:8 minor, 7:0 revision
SLOTS = 64  # outstanding "page not present" tokens per vCPU
DEFAULT_PPI = 17
BLOCK_SIZE = 64
REASON_NOT_PRESENT = 1
REASON_READY = 2
WAKE_ALL = 0xFFFF_FFFF
_TOKEN_VCPU_BITS = 12  # token = (n << 12) | vcpu, as KVM's x86 tokens

# Sub-functions in W1 (numbered as the series' v4 numbers them; SDEI is not served).
SUB_VERSION, SUB_SLOTS, SUB_SDEI, SUB_IRQ, SUB_ENABLE, SUB_IRQ_ACK = range(6)
CONTROL_ENABLED = 1 << 0
CONTROL_SEND_ALWAYS = 1 << 1
CONTROL_RESERVED = 0x3C  # bits 5:2
CONTROL_ADDRESS = ~0x3F & 0xFFFF_FFFF_FFFF_FFFF


@dataclass
class VcpuApf:
    enabled: bool = False
    block: int = 0
    send_always: bool = False  # notify at EL1 / CPL 0 too, not only in user mode
    in_flight: bool = False  # a notification the guest has not acknowledged
    queue: deque[tuple[int, int]] = field(default_factory=deque)  # (reason, token) to send
    outstanding: dict[int, int] = field(default_factory=dict)  # token -> page
    next_id: int = 1


@dataclass
class ApfStats:
    """What the host sent: the ground truth a guest's own counts are checked against."""

    not_present: int = 0
    ready: int = 0
    wake_all: int = 0
    acks: int = 0
    dropped: int = 0  # outstanding tokens a disable threw away


class AsyncPfCore(Service):
    """Tokens, queues and the one-in-flight rule; subclasses deliver and speak the ABI."""

    name = "async-pf"

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.RLock()
        self._vcpus: dict[int, VcpuApf] = {}
        self._waiters: dict[int, list[tuple[int, int]]] = {}  # page -> (vcpu, token)
        self.stats = ApfStats()

    def state(self, vcpu: int) -> VcpuApf:
        with self._lock:
            st = self._vcpus.get(vcpu)
            if st is None:
                st = self._vcpus[vcpu] = VcpuApf()
            return st

    def reset(self) -> None:
        """A system reset: every vCPU starts with async page faults off."""
        with self._lock:
            self._vcpus.clear()
            self._waiters.clear()
            self.stats = ApfStats()

    # -- snapshots -------------------------------------------------------------------------
    def save_state(self) -> dict[str, object]:
        """Each vCPU's enable, block, queue and outstanding tokens, the pages waited on,
        and the host's counts."""
        with self._lock:
            vcpus = {
                str(v): {
                    "enabled": st.enabled, "block": st.block, "send_always": st.send_always,
                    "in_flight": st.in_flight, "queue": [list(q) for q in st.queue],
                    "outstanding": int_keys(st.outstanding), "next_id": st.next_id,
                }
                for v, st in sorted(self._vcpus.items())
            }  # fmt: skip
            waiters = {str(p): [list(w) for w in ws] for p, ws in sorted(self._waiters.items())}
            return {"vcpus": vcpus, "waiters": waiters, "stats": asdict(self.stats)}

    def restore_state(self, state: Fields) -> None:
        vcpus = {int(k): _vcpu_apf(f) for k, f in _numbered(state, "vcpus").items()}
        waiters = {
            int(k): [tuple(pair) for pair in _pairs(f, "list")]
            for k, f in _numbered(state, "waiters", wrap=True).items()
        }
        stats = state.sub("stats")
        counts = ApfStats(**{name: stats.integer(name) for name in asdict(ApfStats())})
        with self._lock:
            self._vcpus, self._waiters, self.stats = vcpus, waiters, counts  # type: ignore[assignment]

    # -- PageNotifier (called by the board's swap controller) ----------------------------
    def page_not_present(
        self, vcpu: int, page: int, user_mode: bool, interrupts_masked: bool
    ) -> int | None:
        with self._lock:
            st = self.state(vcpu)
            if not st.enabled or len(st.outstanding) >= SLOTS:
                return None
            if page in st.outstanding.values():
                return None  # a repeated fault (another task, same page): wait, as KVM does
            if interrupts_masked or not (user_mode or st.send_always):
                return None
            if not self._may_notify(vcpu, st, REASON_NOT_PRESENT):
                return None
            token = self._new_token(vcpu, st)
            if not self._send(vcpu, st, REASON_NOT_PRESENT, token):
                return None
            st.outstanding[token] = page
            self._waiters.setdefault(page, []).append((vcpu, token))
            self.stats.not_present += 1
            return token

    def page_ready(self, page: int) -> list[tuple[int, int]]:
        with self._lock:
            queued = []
            for vcpu, token in self._waiters.pop(page, []):
                st = self.state(vcpu)
                if st.outstanding.pop(token, None) is None:
                    continue  # dropped by a disable
                st.queue.append((REASON_READY, token))
                queued.append((vcpu, token))
                self._pump(vcpu, st)
            return queued

    # -- shared protocol steps ------------------------------------------------------------
    def _enable(self, vcpu: int, block: int, send_always: bool) -> None:
        with self._lock:
            st = self.state(vcpu)
            st.enabled, st.block, st.send_always = True, block, send_always
            st.queue.append((REASON_READY, WAKE_ALL))
            self._pump(vcpu, st)

    def _disable(self, vcpu: int) -> None:
        with self._lock:
            st = self.state(vcpu)
            for token, page in st.outstanding.items():
                waiters = self._waiters.get(page, [])
                if (vcpu, token) in waiters:
                    waiters.remove((vcpu, token))
            self.stats.dropped += len(st.outstanding)
            was_in_flight = st.in_flight
            self._vcpus[vcpu] = VcpuApf(next_id=st.next_id)
            if was_in_flight:
                self._retract(vcpu)

    def _acknowledge(self, vcpu: int) -> bool:
        """The guest is done with the notification in flight; False if there was none."""
        with self._lock:
            st = self.state(vcpu)
            if not st.in_flight:
                return False
            st.in_flight = False
            self.stats.acks += 1
            self._retract(vcpu)
            self._pump(vcpu, st)
            return True

    def _pump(self, vcpu: int, st: VcpuApf) -> None:
        """Send the next queued notification if none is in flight (lock held)."""
        while st.enabled and not st.in_flight and st.queue:
            reason, token = st.queue[0]
            if not self._may_notify(vcpu, st, reason):
                return  # the guest has not made room yet; asked again at its next ack
            st.queue.popleft()
            if self._send(vcpu, st, reason, token):
                if token == WAKE_ALL:
                    self.stats.wake_all += 1
                else:
                    self.stats.ready += 1

    @staticmethod
    def _new_token(vcpu: int, st: VcpuApf) -> int:
        token = ((st.next_id << _TOKEN_VCPU_BITS) | vcpu) & 0xFFFF_FFFF
        st.next_id += 1
        if token in (0, WAKE_ALL) or st.next_id >= 1 << (32 - _TOKEN_VCPU_BITS):
            st.next_id = 1
            token = (1 << _TOKEN_VCPU_BITS) | vcpu
        return token

    # -- what each ABI provides -------------------------------------------------------------
    def _may_notify(self, vcpu: int, st: VcpuApf, reason: int) -> bool:
        """May the guest take this notification now (lock held)?"""
        raise NotImplementedError

    def _send(self, vcpu: int, st: VcpuApf, reason: int, token: int) -> bool:
        """Write the notification where the guest looks and signal it (lock held)."""
        raise NotImplementedError

    def _retract(self, vcpu: int) -> None:  # optional hook
        """The notification in flight is over: lower its signal."""


def _numbered(state: Fields, key: str, wrap: bool = False) -> dict[int, Fields]:
    """A map saved with vCPU or page numbers as keys; `wrap` puts a list value in a map."""
    value = state.raw(key)
    if not isinstance(value, dict) or not all(isinstance(k, str) and k.isdigit() for k in value):
        raise state.bad(key, "a map keyed by numbers")
    out = {}
    for k, v in value.items():
        inner = {"list": v} if wrap else v
        if not isinstance(inner, dict):
            raise state.bad(key, "a map of maps")
        out[int(k)] = Fields(f"{state.section}.{key}[{k}]", inner)
    return out


def _pairs(state: Fields, key: str) -> list[list[int]]:
    value = state.raw(key)
    ok = isinstance(value, list) and all(
        isinstance(p, list) and len(p) == 2 and all(type(x) is int and x >= 0 for x in p)
        for p in value
    )
    if not ok:
        raise state.bad(key, "a list of number pairs")
    return value  # type: ignore[return-value]


def _vcpu_apf(state: Fields) -> VcpuApf:
    return VcpuApf(
        enabled=state.flag("enabled"),
        block=state.integer("block"),
        send_always=state.flag("send_always"),
        in_flight=state.flag("in_flight"),
        queue=deque((r, t) for r, t in _pairs(state, "queue")),
        outstanding=state.int_map("outstanding"),
        next_id=state.integer("next_id", 1, 1 << 32),
    )


class AsyncPfService(AsyncPfCore):
    """arm64: the vendor-hypervisor call and the PPI."""

    abis = frozenset({Abi.SMCCC})
    revision = f"{VERSION >> 16}.{VERSION >> 8 & 0xFF}.{VERSION & 0xFF} (sub-function VERSION)"

    def __init__(self, function: int = ASYNC_PF_FUNCTION, ppi: int = DEFAULT_PPI):
        super().__init__()
        if not 0 <= function < 128:
            raise ValueError(f"vendor function number {function} is not in 0..127")
        self.function_id = VENDOR_SMC32 + function
        self.ppi = ppi

    def claims(self, abi: Abi = Abi.SMCCC) -> list[IdRange]:
        return [IdRange(self.function_id, self.function_id)]

    def functions(self, abi: Abi = Abi.SMCCC) -> list[Function]:
        return [Function(self.function_id, "ASYNC_PF", self._call)]

    def _call(self, call: Call) -> None:
        sub = call.arg(1) & 0xFFFF_FFFF
        if sub == SUB_VERSION:
            call.answer(SmcccReturn.SUCCESS, VERSION)
        elif sub == SUB_SLOTS:
            call.answer(SmcccReturn.SUCCESS, SLOTS)
        elif sub == SUB_IRQ:
            call.answer(SmcccReturn.SUCCESS, self.ppi)
        elif sub == SUB_ENABLE:
            control = (call.arg(3) & 0xFFFF_FFFF) << 32 | call.arg(2) & 0xFFFF_FFFF
            call.answer(self._control(call.vcpu, control))
        elif sub == SUB_IRQ_ACK:
            ok = self._acknowledge(call.vcpu)
            call.answer(SmcccReturn.SUCCESS if ok else SmcccReturn.NOT_REQUIRED)
        else:  # SDEI and anything else
            call.answer(SmcccReturn.NOT_SUPPORTED)

    def _control(self, vcpu: int, control: int) -> int:
        if control & CONTROL_RESERVED:
            return SmcccReturn.INVALID_PARAMETER
        st = self.state(vcpu)
        if not control & CONTROL_ENABLED:
            if not st.enabled:
                return SmcccReturn.NOT_REQUIRED
            self._disable(vcpu)
            return SmcccReturn.SUCCESS
        block = control & CONTROL_ADDRESS
        send_always = bool(control & CONTROL_SEND_ALWAYS)
        if not self.platform.is_ram(block, BLOCK_SIZE):
            return SmcccReturn.INVALID_PARAMETER
        if st.enabled and (st.block, st.send_always) == (block, send_always):
            return SmcccReturn.NOT_REQUIRED
        if st.enabled:
            self._disable(vcpu)
        self._enable(vcpu, block, send_always)
        return SmcccReturn.SUCCESS

    def _may_notify(self, vcpu: int, st: VcpuApf, reason: int) -> bool:
        # One notification of either kind in flight, and a "page not present" never
        # overtakes a queued "page ready".
        return not st.in_flight and (reason == REASON_READY or not st.queue)

    def _send(self, vcpu: int, st: VcpuApf, reason: int, token: int) -> bool:
        # Reason and token in one write, before the PPI rises.
        data = reason.to_bytes(4, "little") + token.to_bytes(4, "little")
        if not self.platform.write_guest(st.block, data):
            return False
        st.in_flight = True
        self.platform.set_ppi(vcpu, self.ppi, True)
        return True

    def _retract(self, vcpu: int) -> None:
        self.platform.set_ppi(vcpu, self.ppi, False)
