"""`pvkit run/decode/services --service package.module:Class` (issue 14, item 2): a service of
the user's own, imported from the current directory or PYTHONPATH, is served, traced,
counted, decoded and discovered like a built-in one; every way naming it can go wrong is
one sentence and exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import PREBUILT, SMP_HELLO, X86_HELLO

VENDOR_CALL = PREBUILT / "vendor-call.Image"  # calls 0xC6000042 (40, i) for i = 1..3
PVKIT = Path(sys.executable).with_name("pvkit")  # the console script, as a user runs it

MODULE = '''
from pvkit import Abi, Call, Function, IdRange, Service

FID = 0xC600_0042


class MyMul(Service):
    """Answers x1 * x2 where the example guest expects a sum: its answers tell them apart."""

    name = "my-mul"

    def claims(self, abi=Abi.SMCCC):
        return [IdRange(FID, FID)]

    def functions(self, abi=Abi.SMCCC):
        return [Function(FID, "MY_MUL", self.mul)]

    def mul(self, call: Call) -> None:
        call.answer(0, call.arg(1) * call.arg(2), 7)


class MyX86(Service):
    name = "my-x86"
    abis = frozenset({Abi.KVM_X86})
    cpuid_feature_bit = 20

    def claims(self, abi=Abi.KVM_X86):
        return [IdRange(0x7FFF_0000, 0x7FFF_0000)]

    def functions(self, abi=Abi.KVM_X86):
        return [Function(0x7FFF_0000, "MY_X86", lambda call: call.answer(42))]


class Clashing(MyMul):
    name = "clashing"

    def claims(self, abi=Abi.SMCCC):
        return [IdRange(0x8600_0001, 0x8600_0001)]  # KVM_FUNC_PTP's

    def functions(self, abi=Abi.SMCCC):
        return []


class NeedsArgs(MyMul):
    def __init__(self, value):
        super().__init__()


class NoName(MyMul):
    name = ""


class NotAService:
    pass


def helper():
    pass


INSTANCE = MyMul()
'''


def run_cli(
    cwd: Path, *args: str, pythonpath: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [str(PVKIT), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def here(tmp_path: Path) -> Path:
    (tmp_path / "mymod.py").write_text(textwrap.dedent(MODULE))
    return tmp_path


def test_a_service_from_the_current_directory_is_served_counted_traced_and_timed(
    here: Path,
) -> None:
    r = run_cli(
        here, "run", "--service", "mymod:MyMul", str(VENDOR_CALL), "--stats",
        "--trace", "t.jsonl", "--timeline", "tl.json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    # discovered (its bitmap bit is set), then called: the answers are the service's
    assert "vendor-call: MYHV_ADD(40, 2) = 80 (status 0, call 7)" in r.stdout
    row = next(ln for ln in r.stderr.splitlines() if "MY_MUL" in ln)
    assert "0xc6000042" in row and " 3 " in row
    calls = [json.loads(x) for x in (here / "t.jsonl").read_text().splitlines()]
    mine = [c for c in calls if c.get("name") == "MY_MUL"]
    assert [c["results"][1] for c in mine] == ["0x28", "0x50", "0x78"]
    assert {c["action"] for c in mine} == {"handle"} and {c["fid"] for c in mine} == {"0xc6000042"}
    timeline = json.loads((here / "tl.json").read_text())
    events = timeline["traceEvents"] if isinstance(timeline, dict) else timeline
    assert sum(1 for e in events if e.get("name") == "MY_MUL") == 3


def test_without_the_service_the_guest_does_not_call(here: Path) -> None:
    r = run_cli(here, "run", str(VENDOR_CALL))
    assert r.returncode == 0, r.stderr
    assert "MYHV_ADD is not offered: not calling it" in r.stdout


def test_the_vendor_bitmap_follows_the_custom_service(here: Path) -> None:
    r = run_cli(here, "run", "--service", "mymod:MyMul", str(SMP_HELLO))
    assert r.returncode == 0, r.stderr
    assert "vendor features: 00000003 00000000 00000004 40000000" in r.stdout  # bit 66


def test_a_module_on_pythonpath_is_found(
    here: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    r = run_cli(elsewhere, "run", "--service", "mymod:MyMul", str(VENDOR_CALL), pythonpath=here)
    assert r.returncode == 0, r.stderr
    assert "= 120 (status 0, call 7)" in r.stdout


def test_an_x86_service_gets_its_cpuid_bit_and_its_number(here: Path) -> None:
    r = run_cli(here, "run", "--service", "mymod:MyX86", str(X86_HELLO))
    assert "unknown nr -> 42" in r.stdout, r.stdout + r.stderr
    features = int(r.stdout.split("features ")[1].split(",")[0], 16)
    assert features >> 20 & 1


def test_decode_names_a_custom_function_and_its_service(here: Path) -> None:
    r = run_cli(here, "decode", "0xc6000042", "--service", "mymod:MyMul")
    assert r.returncode == 0, r.stderr
    for text in ("MY_MUL", "my-mul", "vendor features bitmap bit 66 (W2 bit 2)", "kvm, pvkit"):
        assert text in r.stdout
    x86 = run_cli(here, "decode", "0x7fff0000", "--arch", "x86_64", "--service", "mymod:MyX86")
    assert "MY_X86" in x86.stdout and "bit 20" in x86.stdout
    plain = run_cli(here, "decode", "0xc6000042")
    assert "MY_MUL" not in plain.stdout and "no profile" in plain.stdout


def test_services_lists_a_custom_service_beside_the_builtins(here: Path) -> None:
    r = run_cli(here, "services", "--service", "mymod:MyMul", "--arch", "arm64")
    assert r.returncode == 0, r.stderr
    assert "my-mul  (ABIs: smccc)" in r.stdout
    assert (
        "0xc6000042  MY_MUL  SMCCC >= 1.1, a known vendor Call UID, then features bitmap bit 66"
        in r.stdout
    )


NOT_A_SERVICE = "not a subclass of pvkit.Service"
BAD = [
    ("mymod", "--service 'mymod' does not name a Class: write package.module:Class"),
    (
        "nosuch:X",
        "--service cannot import 'nosuch': no such module in the current directory or on "
        "PYTHONPATH",
    ),
    ("mymod:Nope", "--service module 'mymod' has no attribute 'Nope'"),
    ("mymod:NotAService", f"--service 'mymod:NotAService' is a class but {NOT_A_SERVICE}"),
    ("mymod:helper", f"--service 'mymod:helper' is a function, {NOT_A_SERVICE}"),
    ("mymod:INSTANCE", f"--service 'mymod:INSTANCE' is a MyMul, {NOT_A_SERVICE}"),
    (
        "mymod:Service",
        "--service 'mymod:Service' is abstract: it does not define claims, functions",
    ),
    ("mymod:NeedsArgs", "--service 'mymod:NeedsArgs' cannot be made with no arguments: TypeError:"),
    ("mymod:NoName", "--service 'mymod:NoName' has no name"),
]


@pytest.mark.parametrize(("spec", "message"), BAD, ids=[s for s, _m in BAD])
@pytest.mark.parametrize("verb", ["run", "decode"])
def test_a_service_that_cannot_be_used_is_one_sentence_and_exit_2(
    here: Path, verb: str, spec: str, message: str
) -> None:
    args = [str(VENDOR_CALL)] if verb == "run" else ["0xc6000042"]
    r = run_cli(here, verb, *args, "--service", spec)
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"pvkit: {message}"), r.stderr


def test_an_import_error_inside_the_module_is_one_sentence(here: Path) -> None:
    (here / "broken.py").write_text("import nonexistent_dependency\n")
    (here / "syntax.py").write_text("def f(:\n")
    r = run_cli(here, "run", str(VENDOR_CALL), "--service", "broken:X")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "importing 'broken' failed: ModuleNotFoundError: No module named" in r.stderr
    r = run_cli(here, "run", str(VENDOR_CALL), "--service", "syntax:X")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "importing 'syntax' failed: SyntaxError" in r.stderr


def test_a_clash_or_a_foreign_abi_is_one_sentence(here: Path) -> None:
    r = run_cli(here, "run", str(VENDOR_CALL), "--service", "mymod:Clashing")
    assert r.returncode == 2 and "'clashing'" in r.stderr and "'ptp-kvm'" in r.stderr
    r = run_cli(here, "run", str(X86_HELLO), "--service", "mymod:MyMul")
    assert r.returncode == 2
    assert r.stderr.strip() == (
        "pvkit: service 'my-mul' speaks smccc, not kvm-x86: it cannot serve an x86_64 VM"
    )
