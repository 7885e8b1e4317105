"""True random numbers for the guest: the Arm TRNG firmware interface (Arm DEN0098) v1.0.

Five fast calls in the Standard Secure range (owner 4), beside PSCI:
- TRNG_VERSION answers 1.0 (0x10000), TRNG_FEATURES answers 0 for exactly these five IDs
  (and only while each is really served, policy included), NOT_SUPPORTED for any other.
- TRNG_GET_UUID names this implementation (pvkit's own UUID, below).
- TRNG_RND32 (N <= 96) and TRNG_RND64 (N <= 192) return N bits, the least significant ones
  in the last result register (W3/X3, then W2/X2, then W1/X1), every bit above N zero;
  N = 0 succeeds with no bits; a larger N is INVALID_PARAMETER (-2, TRNG's own code space).
  RND32 is an SMC32 call, so it sees only W1 and writes 32-bit words.

The bits are the host's: `random.SystemRandom` (the OS random source, what `secrets` draws
from, without loading the hashing library `secrets` imports at every start), never a
constant or a seeded generator, also when time is deterministic. A guest asking for true
entropy must not get a replayable stream, so a deterministic run of a guest that consumes
TRNG output (Linux seeds its CRNG from it) can differ between runs; `--disable trng`
restores full reproducibility.
The host source does not run dry, so NO_ENTROPY (-3) is never answered.

ARCH_FEATURES does not report these IDs (their feature value is NOT_SUPPORTED): a guest
discovers TRNG through TRNG_VERSION, as Linux's `smccc_probe_trng` does.
"""

from __future__ import annotations

import uuid
from enum import IntEnum
from random import SystemRandom

from pvkit.abi.smccc import MASK32, MASK64, SmcccReturn, uuid_words
from pvkit.hypercall.call import Call
from pvkit.hypercall.namespace import Abi, Function, IdRange, Memo
from pvkit.services.base import Service

TRNG_VERSION = 0x8400_0050
TRNG_FEATURES = 0x8400_0051
TRNG_GET_UUID = 0x8400_0052
TRNG_RND32 = 0x8400_0053
TRNG_RND64 = 0xC400_0053
TRNG_IDS = frozenset({TRNG_VERSION, TRNG_FEATURES, TRNG_GET_UUID, TRNG_RND32, TRNG_RND64})
VERSION_1_0 = 0x1_0000
MAX_BITS_32 = 3 * 32
MAX_BITS_64 = 3 * 64

# pvkit's TRNG implementation UUID: random (version 4), fixed forever. Its first word is not
# 0xFFFFFFFF; its last six bytes spell "pvtrng" so a register dump is recognisable.
IMPLEMENTATION_UUID = uuid.UUID("d0bf602f-ef13-492a-8e9b-707674726e67")


class TrngReturn(IntEnum):
    """DEN0098 status codes (not the generic SMCCC ones: -2 differs)."""

    SUCCESS = 0
    NOT_SUPPORTED = -1
    INVALID_PARAMETER = -2
    NO_ENTROPY = -3


def pack_entropy(value: int, width: int) -> tuple[int, int, int]:
    """`value` as (W1/X1, W2/X2, W3/X3) of `width` bits each, least significant bits last."""
    mask = (1 << width) - 1
    return ((value >> 2 * width) & mask, (value >> width) & mask, value & mask)


class TrngService(Service):
    STATELESS = True  # its answers depend on the VM's configuration only
    name = "trng"
    firmware_gate = ("std-bmap", 0)  # KVM_REG_ARM_STD_BMAP bit 0, TRNG_V1_0
    revision = f"{VERSION_1_0 >> 16}.{VERSION_1_0 & 0xFFFF} (TRNG_VERSION)"
    discovery = "SMCCC >= 1.1, TRNG_VERSION >= 1.0, then TRNG_FEATURES(ID) == 0"
    return_codes = TrngReturn

    def __init__(self) -> None:
        super().__init__()
        self._uuid = uuid_words(IMPLEMENTATION_UUID.bytes)
        self._entropy = SystemRandom()  # os.urandom: no state of its own

    def claims(self, abi: Abi = Abi.SMCCC) -> list[IdRange]:
        return [IdRange(TRNG_VERSION, TRNG_RND32), IdRange(TRNG_RND64, TRNG_RND64)]

    def functions(self, abi: Abi = Abi.SMCCC) -> list[Function]:
        hidden = SmcccReturn.NOT_SUPPORTED  # what ARCH_FEATURES answers for each
        return [
            Function(TRNG_VERSION, "TRNG_VERSION", self._version, hidden, Memo.CONSTANT),
            Function(TRNG_FEATURES, "TRNG_FEATURES", self._features, hidden, Memo.BY_QUERIED_ID),
            Function(TRNG_GET_UUID, "TRNG_GET_UUID", self._get_uuid, hidden, Memo.CONSTANT),
            # Never memoised: every call draws fresh bits.
            Function(TRNG_RND32, "TRNG_RND32", self._rnd32, hidden),
            Function(TRNG_RND64, "TRNG_RND64", self._rnd64, hidden),
        ]

    def _version(self, call: Call) -> None:
        call.answer(VERSION_1_0)

    def _features(self, call: Call) -> None:
        queried = call.arg(1) & MASK32
        served = queried in TRNG_IDS and self.platform.feature(queried) is not None
        call.answer(TrngReturn.SUCCESS if served else TrngReturn.NOT_SUPPORTED)

    def _get_uuid(self, call: Call) -> None:
        call.answer(*self._uuid)

    def _rnd32(self, call: Call) -> None:
        self._rnd(call, call.arg(1) & MASK32, 32)

    def _rnd64(self, call: Call) -> None:
        self._rnd(call, call.arg(1) & MASK64, 64)

    def _rnd(self, call: Call, bits: int, width: int) -> None:
        if bits > 3 * width:
            call.answer(TrngReturn.INVALID_PARAMETER)
            return
        call.answer(TrngReturn.SUCCESS, *pack_entropy(self._entropy.getrandbits(bits), width))
