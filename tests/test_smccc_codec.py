"""SMCCC function-ID codec (Arm DEN0028 §2.5, Table 2-1)."""

from hypothesis import given
from hypothesis import strategies as st

from pvkit.abi.smccc import MASK32, FunctionId, fast_call, to_u64, uuid_words

u32 = st.integers(min_value=0, max_value=MASK32)


@given(u32)
def test_decode_then_encode_is_identity(value: int) -> None:
    assert FunctionId.decode(value).encode() == value


@given(st.booleans(), st.booleans(), st.integers(0, 63), st.integers(0, 0xFFFF))
def test_encode_then_decode_keeps_every_field(
    fast: bool, smc64: bool, owner: int, num: int
) -> None:
    f = FunctionId(fast=fast, smc64=smc64, owner=owner, number=num)
    assert FunctionId.decode(f.encode()) == f


def test_only_w0_is_the_function_id() -> None:
    assert FunctionId.decode(0xDEAD_BEEF_C500_0021) == FunctionId.decode(0xC500_0021)


def test_pv_time_st_decodes_as_the_spec_says() -> None:
    f = FunctionId.decode(0xC500_0021)
    assert (f.fast, f.smc64, f.owner, f.number) == (True, True, 5, 0x21)
    assert f.convention == "SMC64/HVC64"


def test_composition_matches_published_ids() -> None:
    assert fast_call(4, 3, smc64=True) == 0xC400_0003  # CPU_ON64
    assert fast_call(6, 0xFF01) == 0x8600_FF01  # vendor Call UID
    assert fast_call(0, 0) == 0x8000_0000  # SMCCC_VERSION


def test_fast_call_with_mbz_bits_is_not_well_formed() -> None:
    assert not FunctionId.decode(0x8402_0000).well_formed
    assert FunctionId.decode(0x0402_0000).well_formed  # yielding calls have no MBZ field


def test_not_supported_is_sign_extended() -> None:
    assert to_u64(-1) == 0xFFFF_FFFF_FFFF_FFFF


def test_kvm_uid_packs_into_the_published_register_words() -> None:
    import uuid

    kvm = uuid.UUID("28b46fb6-2ec5-11e9-a9ca-4b564d003a74").bytes
    assert uuid_words(kvm) == (0xB66FB428, 0xE911C52E, 0x564BCAA9, 0x743A004D)
