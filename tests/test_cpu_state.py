"""An arm64 vCPU's saved registers come back whole, SVE's included (backends/arm64/cpu_state.py)."""

from __future__ import annotations

import json
import random

import pytest
from unicorn import UC_ARCH_ARM64, UC_MODE_ARM, Uc  # type: ignore[attr-defined]
from unicorn import arm64_const as r

from pvkit.backends import uc_controls as ucc
from pvkit.backends.arm64 import cpu_state
from pvkit.snapshot.errors import SnapshotError
from pvkit.snapshot.state import Fields


def engine() -> Uc:
    uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
    uc.ctl_set_cpu_model(r.UC_CPU_ARM64_MAX)  # the CPU pvkit's vCPUs have: SVE among it
    return uc


def saved(uc: Uc) -> Fields:
    """What a snapshot file holds: the state through JSON and back."""
    return Fields("cpu:0", json.loads(json.dumps(cpu_state.save_cpu(uc))))


def test_sve_registers_survive_a_save_whole_not_only_their_low_128_bits() -> None:
    rng = random.Random(7)
    z = [rng.getrandbits(8 * ucc.SVE_Z_BYTES) for _ in range(32)]
    p = [rng.getrandbits(8 * ucc.SVE_P_BYTES) for _ in range(17)]
    src = engine()
    for i, value in enumerate(z):
        ucc.write_wide(src, ucc.UC_ARM64_REG_Z0 + i, ucc.SVE_Z_BYTES, value)
    for i, value in enumerate(p):
        ucc.write_wide(src, ucc.UC_ARM64_REG_P0 + i, ucc.SVE_P_BYTES, value)
    assert src.reg_read(r.UC_ARM64_REG_V3) == z[3] & ((1 << 128) - 1)  # V is Z's low part
    dst = engine()
    cpu_state.load_cpu(dst, cpu_state.parse_cpu(saved(src)))
    assert [ucc.read_wide(dst, ucc.UC_ARM64_REG_Z0 + i, ucc.SVE_Z_BYTES) for i in range(32)] == z
    assert [ucc.read_wide(dst, ucc.UC_ARM64_REG_P0 + i, ucc.SVE_P_BYTES) for i in range(16)] == p[
        :16
    ]
    assert ucc.read_wide(dst, ucc.UC_ARM64_REG_FFR, ucc.SVE_P_BYTES) == p[16]


def test_a_version_1_section_without_sve_registers_restores_its_v_registers() -> None:
    src = engine()
    src.reg_write(r.UC_ARM64_REG_V5, (1 << 127) | 5)
    state = json.loads(json.dumps(cpu_state.save_cpu(src)))
    del state["z"], state["p"]
    dst = engine()
    ucc.write_wide(dst, ucc.UC_ARM64_REG_Z0 + 5, ucc.SVE_Z_BYTES, 1 << 2000)
    cpu_state.load_cpu(dst, cpu_state.parse_cpu(Fields("cpu:0", state)))
    assert dst.reg_read(r.UC_ARM64_REG_V5) == (1 << 127) | 5


def test_a_z_register_wider_than_the_engine_is_refused_naming_it() -> None:
    state = json.loads(json.dumps(cpu_state.save_cpu(engine())))
    state["z"][0] = 1 << (8 * ucc.SVE_Z_BYTES)
    with pytest.raises(SnapshotError, match="'z'"):
        cpu_state.parse_cpu(Fields("cpu:0", state))
