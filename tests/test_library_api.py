"""The public API (issue 14, item 3): `pvkit` re-exports pvkit/api.py lazily, and its board
builders, policy rules, sinks and run results are enough to prototype a service."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import pvkit
from pvkit import api

from .conftest import PREBUILT, SMP_HELLO, X86_HELLO

VENDOR_CALL = PREBUILT / "vendor-call.Image"


def test_import_pvkit_loads_no_board_engine_or_cli() -> None:
    code = (
        "import sys, pvkit; "
        "print(sorted(m for m in sys.modules if m.startswith(('pvkit.', 'unicorn', 'typer'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_public_name_resolves_and_the_two_lists_agree() -> None:
    assert sorted(pvkit.__all__) == sorted([*api.__all__, "__version__"])
    for name in api.__all__:
        assert getattr(pvkit, name) is getattr(api, name)
    assert dir(pvkit) == sorted(pvkit.__all__)
    with pytest.raises(AttributeError, match="no attribute 'VendorHypService'"):
        pvkit.VendorHypService  # noqa: B018  # implementation, not API


def test_arm64_virt_runs_a_guest_and_reports_its_calls(tmp_path: Path) -> None:
    out: list[bytes] = []
    vm = pvkit.arm64_virt(SMP_HELLO, smp=2, console=out.append, deterministic=True)
    result = pvkit.run(vm, 60, trace_file=tmp_path / "t.jsonl", timeline_file=tmp_path / "t.json")
    assert result.reason.kind is pvkit.StopKind.SHUTDOWN and result.handler_errors == 0
    assert result.count("CPU_ON64") == 1 and result.count("SYSTEM_OFF") == 1
    assert b"hello from cpu 1" in b"".join(out)
    traced = [json.loads(x) for x in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert sum(1 for x in traced if x["type"] == "call") == sum(c.count for c in result.calls)
    assert json.loads((tmp_path / "t.json").read_text())


def test_disable_and_profile_by_name() -> None:
    vm = pvkit.arm64_virt(SMP_HELLO, disable=["vendor-hyp"], profile="pvkit", console=lambda b: b)
    assert "vendor-hyp" not in {s.name for s in vm.services}
    with pytest.raises(pvkit.ConfigError, match="profile 'xen' is unknown"):
        pvkit.arm64_virt(SMP_HELLO, profile="xen")
    with pytest.raises(pvkit.ConfigError, match="--disable 'nope'"):
        pvkit.arm64_virt(SMP_HELLO, disable=["nope"])


def test_x86_pc_with_a_forward_rule_gives_the_handler_the_call() -> None:
    seen: list[pvkit.Call] = []

    def handler(call: pvkit.Call) -> None:
        seen.append(call)
        call.answer(7)

    rule = pvkit.Rule(pvkit.IdRange(0x7FFF_0000, 0x7FFF_0000), pvkit.Action.FORWARD, handler)
    out: list[bytes] = []
    vm = pvkit.x86_pc(X86_HELLO, rules=[rule], console=out.append)
    result = pvkit.run(vm, 60)
    assert "unknown nr -> 7" in b"".join(out).decode()
    assert [c.function_id for c in seen] == [0x7FFF_0000] and seen[
        0
    ].conduit is pvkit.Conduit.VMCALL
    assert result.reason.kind is pvkit.StopKind.SHUTDOWN


def test_a_custom_service_through_the_api_is_discovered_and_called() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "guests" / "examples"))
    try:
        from myhv import MyService  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    service = MyService()
    out: list[bytes] = []
    result = pvkit.run(pvkit.arm64_virt(VENDOR_CALL, services=[service], console=out.append), 60)
    assert service.calls == 3 == result.count("MYHV_ADD")
    assert "MYHV_ADD(40, 3) = 43 (status 0, call 3)" in b"".join(out).decode()
    info = pvkit.describe_service(service, pvkit.Abi.SMCCC)
    assert [(f.c_name, f.bitmap_bit) for f in info.functions] == [("MYHV_ADD", 66)]
