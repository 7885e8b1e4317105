"""Snapshots and migrations of a VM with services and policy rules of the user's own
(docs/snapshot.md): the file names them, the restore (or the migration's destination) is
given them again, and the service's own state comes back with the guest.

The guest calls COUNT six times, printing each answer (how many calls the service has
seen), and powers off; saved after its second call, a restored run prints the rest,
"3456", only if the count came back with it.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pvkit.snapshot.format import json_section, read_snapshot, write_snapshot
from pvkit.snapshot.sections import KNOWN

from .conftest import pvkit
from .test_migration import destination, one_sentence

MODULE = '''
from pvkit import Abi, Call, Function, IdRange, Service

COUNT = 0xC600_0042


class Counter(Service):
    name = "counter"

    def __init__(self):
        super().__init__()
        self.calls = 0

    def claims(self, abi=Abi.SMCCC):
        return [IdRange(COUNT, COUNT)]

    def functions(self, abi=Abi.SMCCC):
        return [Function(COUNT, "COUNT", self.count)]

    def count(self, call: Call) -> None:
        self.calls += 1
        call.answer(0, self.calls)

    def save_state(self):
        return {"calls": self.calls}

    def restore_state(self, state):
        self.calls = state.integer("calls")


class Forgetful(Counter):
    """Stateful, but says nothing of its state: it cannot be saved."""

    name = "forgetful"
    save_state = Service.save_state


def refuse(call: Call) -> None:
    call.answer(7)
'''

GUEST = """
ldr x20, =0x09000000
mov x21, #0
1:  ldr x0, =0xC6000042
    hvc #0
    add w3, w1, #'0'
    strb w3, [x20]
    ldr x4, =3000000
2:  subs x4, x4, #1
    b.ne 2b
    add x21, x21, #1
    cmp x21, #6
    b.ne 1b
mov w3, #'\\n'
strb w3, [x20]
ldr x0, =0x84000008
hvc #0
b .
"""
SAVE_MS = "10"  # the deterministic save point after the guest's second call
RULES = ["--deny", "0xC6000043", "--forward", "0xC6000044-0xC6000045=counter:refuse"]


@pytest.fixture
def guest(asm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:  # type: ignore[no-untyped-def]
    (tmp_path / "counter.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # where pvkit imports counter from
    return str(asm(GUEST))


def saved(guest: str, path: Path, *options: str) -> Path:
    r = pvkit("run", guest, "--deterministic", *options, "--save-at", SAVE_MS, "--save", str(path))
    assert r.returncode == 0 and r.stdout == "12", r.stderr
    return path


def test_a_saved_custom_service_comes_back_with_its_state(guest: str, tmp_path: Path) -> None:
    whole = pvkit("run", guest, "--deterministic", "--service", "counter:Counter")
    assert whole.stdout == "123456\n", whole.stderr
    snap = saved(guest, tmp_path / "vm.snap", "--service", "counter:Counter", *RULES)
    r = pvkit("restore", str(snap), *RULES[2:], *RULES[:2], "--service", "counter:Counter")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "3456\n"


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ([*RULES], "the saved VM had --service counter:Counter: restore it with the same "
                   "--service options (given: none)"),
        (["--service", "counter:Forgetful", *RULES], "(given: --service counter:Forgetful)"),
        (["--service", "counter:Counter"], "the saved VM had --deny 0xc6000043, --forward "
         "0xc6000044-0xc6000045=counter:refuse: restore it with the same --deny and --forward "
         "options (given: none)"),
        (["--service", "counter:Counter", "--deny", "0xC6000043-0xC6000044"],
         "(given: --deny 0xc6000043-0xc6000044)"),
    ],
    ids=["no-service", "other-service", "no-rules", "other-rules"],
)  # fmt: skip
def test_a_restore_not_given_the_same_services_and_rules_is_refused_naming_them(
    guest: str, tmp_path: Path, given: list[str], says: str
) -> None:
    snap = saved(guest, tmp_path / "vm.snap", "--service", "counter:Counter", *RULES)
    r = pvkit("restore", str(snap), *given)
    one_sentence(r.stderr, 2, r.returncode, says)
    assert r.stdout == ""


def test_a_vm_without_them_refuses_a_restore_given_some(guest: str, tmp_path: Path) -> None:
    r = pvkit("run", guest, "--deterministic", "--save-at", SAVE_MS, "--save", str(tmp_path / "s"))
    assert r.returncode == 0, r.stderr
    r = pvkit("restore", str(tmp_path / "s"), "--service", "counter:Counter")
    one_sentence(r.stderr, 2, r.returncode, "the saved VM had no --service options")


def test_a_service_that_does_not_say_its_state_cannot_be_saved(guest: str, tmp_path: Path) -> None:
    r = pvkit(
        "run", guest, "--deterministic", "--service", "counter:Forgetful",
        "--save-at", SAVE_MS, "--save", str(tmp_path / "vm.snap"),
    )  # fmt: skip
    one_sentence(r.stderr, 2, r.returncode, "service 'forgetful' does not say what state it has")
    assert not (tmp_path / "vm.snap").exists()


def test_a_migration_destination_given_the_service_takes_the_guest_and_its_count(
    guest: str,
) -> None:
    dst = destination("--service", "counter:Counter", *RULES)
    src = pvkit(
        "run", guest, "--deterministic", "--service", "counter:Counter", *RULES,
        "--migrate-at", SAVE_MS, "--migrate-to", dst.uri,
    )  # fmt: skip
    status, out, err = dst.finish()
    assert src.returncode == 0, src.stderr
    assert (status, src.stdout + out) == (0, "123456\n"), err


def test_a_migration_destination_without_the_service_refuses_the_guest(guest: str) -> None:
    dst = destination()
    src = pvkit(
        "run", guest, "--deterministic", "--service", "counter:Counter",
        "--migrate-at", SAVE_MS, "--migrate-to", dst.uri,
    )  # fmt: skip
    status, _out, err = dst.finish()
    one_sentence(err, 2, status, "the saved VM had --service counter:Counter")
    assert src.returncode == 0 and src.stdout == "123456\n", src.stderr  # it ran on there


@pytest.mark.parametrize(
    "rules",
    [
        "deny all",
        [{"ids": [5, 4], "action": "deny", "handler": None}],
        [{"ids": [1, 2], "action": "forward", "handler": None}],
        [{"ids": [1, 2], "action": "deny", "handler": "counter:refuse"}],
        [{"ids": [1, 2, 3], "action": "deny", "handler": None}],
        [{"ids": [1, 2**64], "action": "deny", "handler": None}],
        [{"ids": ["1", 2], "action": "deny", "handler": None}],
        [{"ids": [1, 2], "action": "allow", "handler": None, "extra": 1}],
    ],
    ids=["text", "backwards", "forward-nowhere", "deny-with-handler", "three-ids", "too-big",
         "string-id", "extra-key"],
)  # fmt: skip
def test_a_crafted_rules_field_is_one_sentence_not_a_traceback(
    guest: str, tmp_path: Path, rules: object
) -> None:
    """The file is hostile input: its checksum is recomputed around a bad rules list."""
    snap = saved(guest, tmp_path / "vm.snap", "--service", "counter:Counter", *RULES)
    crafted = read_snapshot(snap, KNOWN)
    machine = crafted.sections["machine"]
    state = machine.json("machine")
    state["rules"] = rules
    crafted.sections["machine"] = json_section(machine.version, state)
    write_snapshot(snap, crafted)
    r = pvkit("restore", str(snap), "--service", "counter:Counter", *RULES)
    one_sentence(
        r.stderr, 2, r.returncode, "section 'machine' is damaged: 'rules' is not a list of policy"
    )
