"""`pvkit run --deny` and `--forward` (issue 14, item 5): KVM's SMCCC filter on the command
line, on both architectures; decided before dispatch, shown in the trace's action field and
counted by --stats; every mistake is one sentence and exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pvkit.hypercall.rule_spec import RuleSpecError, parse_id_range, split_forward

from .conftest import PREBUILT, SMP_HELLO, X86_HELLO

VENDOR_CALL = PREBUILT / "vendor-call.Image"
EXAMPLES = PREBUILT.parent / "examples"
PVKIT = Path(sys.executable).with_name("pvkit")

HANDLERS = """
def add(call):
    call.answer(0, call.arg(1) + call.arg(2), 99)


def seven(call):
    call.answer(7)


def broken(call):
    raise RuntimeError("my bug")
"""


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(EXAMPLES)  # myhv.py, the example service
    return subprocess.run(
        [str(PVKIT), "run", *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.fixture
def here(tmp_path: Path) -> Path:
    (tmp_path / "handlers.py").write_text(HANDLERS)
    return tmp_path


def calls(trace: Path) -> list[dict[str, object]]:
    records = [json.loads(x) for x in trace.read_text().splitlines()]
    return [r for r in records if r["type"] == "call"]


def test_deny_answers_not_supported_before_dispatch_on_arm64(here: Path) -> None:
    r = run_cli(here, str(VENDOR_CALL), "--deny", "0x84000008", "--trace", "t.jsonl", "--stats")
    assert r.returncode == 3, r.stderr  # SYSTEM_OFF denied: the guest returns and halts
    denied = [c for c in calls(here / "t.jsonl") if c["action"] == "deny"]
    assert [(c["fid"], c["results"][0]) for c in denied] == [("0x84000008", "0xffffffffffffffff")]
    assert "pvkit: policy deny 0x84000008 (answered NOT_SUPPORTED): 1 call(s)" in r.stderr


def test_a_denied_vendor_function_leaves_the_bitmap_and_is_never_called(here: Path) -> None:
    r = run_cli(
        here, str(VENDOR_CALL), "--service", "myhv:MyService", "--deny", "0xc6000040-0xc600004f",
        "--trace", "t.jsonl",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "MYHV_ADD is not offered: not calling it" in r.stdout
    assert all(c["fid"] != "0xc6000042" for c in calls(here / "t.jsonl"))


def test_forward_gives_the_users_function_the_call_on_arm64(here: Path) -> None:
    # No service at all: the forwarded ID is served, so the bitmap offers it to the guest.
    r = run_cli(here, str(VENDOR_CALL), "--forward", "0xc6000042=handlers:add", "--stats",
                "--trace", "t.jsonl")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "vendor-call: MYHV_ADD(40, 3) = 43 (status 0, call 99)" in r.stdout
    forwarded = [c for c in calls(here / "t.jsonl") if c["action"] == "forward"]
    assert len(forwarded) == 3 and {c["fid"] for c in forwarded} == {"0xc6000042"}
    assert "pvkit: policy forward 0xc6000042 to handlers:add: 3 call(s)" in r.stderr


def test_a_forward_rule_overrides_a_service_and_a_raising_handler_is_contained(
    here: Path,
) -> None:
    r = run_cli(here, str(VENDOR_CALL), "--service", "myhv:MyService",
                "--forward", "0xc6000042=handlers:broken", "--trace", "t.jsonl")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "= 0 (status -1, call 0)" in r.stdout  # NOT_SUPPORTED, the rest zero
    assert "pvkit: 3 hypercall handler error(s)" in r.stderr
    errors = [c for c in calls(here / "t.jsonl") if c["action"] == "error"]
    assert len(errors) == 3 and "RuntimeError: my bug" in str(errors[0]["detail"])


def test_deny_and_forward_on_x86(here: Path) -> None:
    r = run_cli(here, str(X86_HELLO), "--deny", "11", "--forward", "0x7fff0000=handlers:seven",
                "--trace", "t.jsonl", "--stats")  # fmt: skip
    assert "x86-hello: native call nr 11 -> -1000" in r.stdout  # -KVM_ENOSYS
    assert "x86-hello: unknown nr -> 7" in r.stdout
    actions = {(c["fid"], c["action"]) for c in calls(here / "t.jsonl")}
    assert {("0x0000000b", "deny"), ("0x7fff0000", "forward")} <= actions
    assert "pvkit: policy deny 0x0000000b (answered -KVM_ENOSYS):" in r.stderr
    assert "pvkit: policy forward 0x7fff0000 to handlers:seven: 1 call(s)" in r.stderr


BAD = [
    (["--deny", "0x80000000"], "policy: range 0x80000000 overlaps the unfilterable range"),
    (["--deny", "5-3"], "--deny '5-3': the range ends at 0x3, before it starts"),
    (["--deny", "zz"], "--deny 'zz': 'zz' is not a number (use 0x... for hex)"),
    (["--deny", "0x1ffffffff"], "--deny '0x1ffffffff': 0x1ffffffff is not a function ID"),
    (["--deny", "1", "--deny", "1"], "policy: range 0x00000001 overlaps the existing rule"),
    (["--forward", "1"], "--forward '1' is not FID[-FID]=package.module:function"),
    (["--forward", "1=nomod:f"], "--forward cannot import 'nomod'"),
    (["--forward", "1=handlers:nope"], "--forward module 'handlers' has no attribute 'nope'"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[" ".join(a) for a, _m in BAD])
def test_a_bad_rule_is_one_sentence_and_exit_2(here: Path, args: list[str], message: str) -> None:
    r = run_cli(here, str(SMP_HELLO), *args)
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith(f"pvkit: {message}"), r.stderr


def test_x86_ids_are_64_bit_and_unprotected(here: Path) -> None:
    r = run_cli(here, str(X86_HELLO), "--deny", "0x1ffffffff", "--deny", "0x80000000")
    assert "Traceback" not in r.stderr and "x86-hello: done" in r.stdout


def test_rule_text() -> None:
    assert (parse_id_range("0x10-0x1f", 0xFF).first, parse_id_range("0x10-0x1f", 0xFF).last) == (
        0x10,
        0x1F,
    )
    assert parse_id_range(" 7 ", 0xFF).first == parse_id_range(" 7 ", 0xFF).last == 7
    assert split_forward("1-2 = m:f") == ("1-2", "m:f")
    for text in ("", "-", "1-", "-1", "0x100"):
        with pytest.raises(RuleSpecError):
            parse_id_range(text, 0xFF)
    with pytest.raises(RuleSpecError):
        split_forward("=m:f")
