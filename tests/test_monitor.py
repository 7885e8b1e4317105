"""The monitor socket end to end, and saves of running (wall-clock) VMs.

A VM is saved mid-run at a point the test chooses without racing the guest: a gdb
breakpoint holds it (through the raw client of test_gdb_stub.py), the monitor saves it
while the debugger holds it, and `quit` ends the run there, so what the run printed and
what the restored run prints are the whole console of an uninterrupted run. The gdb stub
and the monitor share the run, each with its own hold on the VM.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from elftools.elf.elffile import ELFFile

from pvkit.debug.packets import frame
from pvkit.monitor.client import call
from pvkit.monitor.protocol import MAX_LINE

from .conftest import PREBUILT, SMP_HELLO, X86_HELLO, assemble, pvkit, spawn
from .test_gdb_stub import Client

STEAL = PREBUILT / "steal.Image"
STEAL_X86 = PREBUILT / "steal-x86.elf"
SECONDARY_ENTRY = 0x4020_0000 + 0x360  # smp-hello's secondary_entry (test_gdb_stub checks it)
GDB = re.compile(r"gdb stub listening on 127\.0\.0\.1:(\d+)")


@dataclass
class Vm:
    proc: subprocess.Popen[str]
    socket: Path
    gdb_port: int | None = None
    seen: list[str] = field(default_factory=list)

    def ask(self, command: str, **arguments: Any) -> dict[str, Any]:
        return call(self.socket, command, arguments, timeout=60)

    def ok(self, command: str, **arguments: Any) -> Any:
        answer = self.ask(command, **arguments)
        assert "return" in answer, answer
        return answer["return"]

    def finish(self) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=120)
        return self.proc.returncode, out, "".join(self.seen) + err

    def migration_end(self, timeout: float = 120) -> dict[str, Any]:
        """query-migrate's answer once the move is no longer active."""
        deadline = time.monotonic() + timeout
        while (info := self.ok("query-migrate"))["status"] == "active":
            assert time.monotonic() < deadline, info
            time.sleep(0.02)
        assert isinstance(info, dict)
        return info


def start(tmp: Path, verb: str, *args: str, gdb: bool = False) -> Vm:
    """`pvkit VERB ARGS --monitor unix:...` (and --gdb tcp::0), once it listens."""
    sock = tmp / "m.sock"
    extra = ["--gdb", "tcp::0"] if gdb else []
    proc = spawn([sys.executable, "-m", "pvkit", verb, *args, "--monitor", f"unix:{sock}", *extra])
    assert proc.stderr is not None
    vm = Vm(proc, sock)
    while "monitor listening" not in "".join(vm.seen) or (gdb and vm.gdb_port is None):
        line = proc.stderr.readline()
        if not line:
            proc.kill()
            pytest.fail(f"pvkit ended before listening: {''.join(vm.seen)}")
        vm.seen.append(line)
        if m := GDB.search(line):
            vm.gdb_port = int(m.group(1))
    return vm


def lines(text: str) -> Counter[str]:
    return Counter(ln.rstrip("\r") for ln in text.splitlines() if ln.strip())


def _symbol(elf: Path, name: str) -> int:
    with elf.open("rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        return int(symtab.get_symbol_by_name(name)[0]["st_value"])  # type: ignore[union-attr]


# -- a running VM saved and restored ------------------------------------------------------
@pytest.mark.parametrize("timing", [[], ["--deterministic"]], ids=["wall", "deterministic"])
def test_a_vm_saved_at_a_breakpoint_restores_to_the_rest_of_its_run(
    tmp_path: Path, timing: list[str]
) -> None:
    whole = pvkit("run", str(SMP_HELLO), "--smp", "2", *timing)
    assert whole.returncode == 0, whole.stderr
    vm = start(tmp_path, "run", str(SMP_HELLO), "--smp", "2", "-S", *timing, gdb=True)
    assert vm.gdb_port is not None
    gdb = Client(vm.gdb_port)
    assert gdb.ask(b"?").startswith(b"T05")
    assert gdb.ask(f"Z0,{SECONDARY_ENTRY:x},4".encode()) == b"OK"
    gdb.send(frame(b"c"))
    assert gdb.packet().startswith(b"T05thread:2")  # vCPU 1 at its first instruction
    info = vm.ok("info")
    assert (info["status"], info["held-by"], info["running"]) == ("debug", ["gdb"], False)
    assert info["vcpus"][1]["pc"] == SECONDARY_ENTRY and info["vcpus"][1]["power"] == "on"
    assert info["clock"]["source"] == ("deterministic" if timing else "host")
    # The client's own spelling: a relative file is the client's working directory's.
    saved = subprocess.run(
        [sys.executable, "-m", "pvkit", "monitor", str(vm.socket), "savevm", "vm.snap"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert saved.returncode == 0, saved.stderr
    reply = json.loads(saved.stdout)["return"]
    assert reply["file"] == str(tmp_path / "vm.snap") and reply["bytes"] > 0
    assert vm.ok("query-status") == {"running": False, "status": "debug"}  # still held
    refused = vm.ask("cont")  # the monitor's cont cannot lift the debugger's hold
    assert refused["error"]["class"] == "GenericError"
    assert "gdb holds it too" in refused["error"]["desc"]
    assert vm.ok("quit") == {}
    rc, before, err = vm.finish()
    gdb.close()
    assert rc == 0 and "pvkit: quit: quit from the monitor" in err, err
    restored = pvkit("restore", str(tmp_path / "vm.snap"))
    assert restored.returncode == 0, restored.stderr
    assert "hello from cpu 1 (mpidr 0x1)" in restored.stdout  # what vCPU 1 did after the save
    assert lines(before) + lines(restored.stdout) == lines(whole.stdout)


def test_x86_saved_under_a_debugger_and_restored_ends_as_the_guest_decides(
    tmp_path: Path,
) -> None:
    ap_main = _symbol(X86_HELLO, "guest_ap_main")
    vm = start(tmp_path, "run", str(X86_HELLO), "--smp", "2", "-S", gdb=True)
    assert vm.gdb_port is not None
    refused = vm.ask("savevm", file=str(tmp_path / "early.snap"))  # still in its boot code
    assert "is not in 64-bit mode yet" in refused["error"]["desc"]
    assert not (tmp_path / "early.snap").exists()
    gdb = Client(vm.gdb_port)
    assert gdb.ask(b"?").startswith(b"T05")
    assert gdb.ask(f"Z1,{ap_main:x},1".encode()) == b"OK"
    gdb.send(frame(b"c"))
    assert gdb.packet().startswith(b"T05thread:2")
    assert vm.ok("info")["vcpus"][1]["pc"] == ap_main
    vm.ok("savevm", file=str(tmp_path / "x86.snap"))
    assert gdb.ask(b"z1," + f"{ap_main:x},1".encode()) == b"OK"
    gdb.send(frame(b"D"))  # the debugger leaves: the VM runs on to its end
    rc, before, err = vm.finish()
    gdb.close()
    assert rc == 1 and "x86-hello: done" in before, err  # isa-debug-exit 0: status 1
    restored = pvkit("restore", str(tmp_path / "x86.snap"))
    assert restored.returncode == 1, restored.stderr
    out = restored.stdout
    assert "cpu 1 up" in out and "KICK_CPU -> 0, cpu 1 left HLT" in out
    assert out.rstrip().endswith("x86-hello: done")


def test_a_restored_vm_stands_at_its_saved_pc_and_continues(tmp_path: Path) -> None:
    vm = start(tmp_path, "run", str(SMP_HELLO), "--smp", "2", "-S", gdb=True)
    assert vm.gdb_port is not None
    gdb = Client(vm.gdb_port)
    assert gdb.ask(b"?").startswith(b"T05")
    assert gdb.ask(f"Z0,{SECONDARY_ENTRY:x},4".encode()) == b"OK"
    gdb.send(frame(b"c"))
    assert gdb.packet().startswith(b"T05")
    vm.ok("savevm", file=str(tmp_path / "vm.snap"))
    vm.ok("quit")
    assert vm.finish()[0] == 0
    gdb.close()
    again = start(tmp_path, "restore", str(tmp_path / "vm.snap"), "-S")
    info = again.ok("info")
    assert info["status"] == "paused" and info["vcpus"][1]["pc"] == SECONDARY_ENTRY
    assert again.ok("cont") == {}
    rc, out, err = again.finish()
    assert rc == 0 and "all 1 secondary cpus came and went" in out, err


COUNTER = """
  movz x1, #0x4800, lsl #16
  mov x2, #0
1: add x2, x2, #1
  str x2, [x1]
  b 1b
"""  # counts at 0x48000000 for ever: running whenever the monitor asks


def test_savevm_of_a_running_vm_saves_and_lets_it_run_on(tmp_path: Path) -> None:
    guest = assemble(tmp_path, COUNTER)
    code = range(0x4008_0000, 0x4008_0014)  # its five instructions (it may not have begun)
    vm = start(tmp_path, "run", str(guest))
    saved = vm.ok("savevm", file=str(tmp_path / "run.snap"))
    assert saved["bytes"] > 0
    info = vm.ok("info")
    assert info["status"] == "running" and info["running"] is True and info["held-by"] == []
    assert info["vcpus"][0]["pc"] in code
    assert vm.ok("stop") == {} and vm.ok("query-status")["status"] == "paused"
    vm.ok("savevm", file=str(tmp_path / "stopped.snap"))
    assert vm.ok("query-status")["status"] == "paused"  # a stopped VM stays stopped
    vm.ok("quit")
    rc, _out, err = vm.finish()
    assert rc == 0 and "pvkit: quit: quit from the monitor" in err
    for name in ("run.snap", "stopped.snap"):
        again = start(tmp_path, "restore", str(tmp_path / name), "-S")
        info = again.ok("info")
        assert info["vcpus"][0]["pc"] in code and info["status"] == "paused"
        again.ok("cont")
        assert again.ok("info")["clock"]["ns"] >= info["clock"]["ns"]  # it goes on from there
        again.ok("quit")
        assert again.finish()[0] == 0


@pytest.mark.parametrize(
    ("image", "args", "at_ms", "status"),
    [(STEAL, ["--smp", "4"], "100", 0), (STEAL_X86, ["--smp", "2"], "60", 1)],
    ids=["arm64", "x86"],
)
def test_save_at_on_the_host_clock_and_restore(
    tmp_path: Path, image: Path, args: list[str], at_ms: str, status: int
) -> None:
    """The steal guests work 200 ms of their clock per vCPU on one host CPU: a save at
    100 ms (60 ms) of it always lands mid-run."""
    snap = tmp_path / "wall.snap"
    run = [str(image), *args, "--host-cpus", "1"]
    saved = pvkit("run", *run, "--save-at", at_ms, "--save", str(snap))
    assert saved.returncode == 0 and "pvkit: saved: saved the VM at" in saved.stderr
    stood = int(re.search(r"saved the VM at (\d+) ns", saved.stderr).group(1))  # type: ignore[union-attr]
    assert stood >= int(at_ms) * 1_000_000
    restored = pvkit("restore", str(snap), "--stats")
    assert restored.returncode == status, restored.stderr
    out = saved.stdout + restored.stdout
    cpus = int(args[1])
    assert re.match(rf"steal: {cpus} cpus, 200 ms of work each", out)
    stolen = re.findall(r"^steal: cpu (\d+) stolen (\d+) ns of (\d+) ns elapsed", out, re.M)
    assert sorted(int(c) for c, _, _ in stolen) == list(range(cpus))
    # The clock went on from the saved time: every vCPU's elapsed time is its 200 ms of
    # work and more, never less (a clock restarted at 0 would have cut it short).
    assert all(int(elapsed) >= 200_000_000 for _, _, elapsed in stolen)
    assert "pvkit: vCPU time (wall clock, 1 host CPU(s))" in restored.stderr


# -- hostile clients ------------------------------------------------------------------
class Raw:
    """A client that sends whatever it likes and reads one reply line at a time."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(str(path))
        self.buffer = b""
        self.greeting = self.line()

    def line(self) -> dict[str, Any]:
        while b"\n" not in self.buffer:
            data = self.sock.recv(65536)
            assert data, "the monitor closed the connection"
            self.buffer += data
        raw, _, self.buffer = self.buffer.partition(b"\n")
        value = json.loads(raw)
        assert isinstance(value, dict)
        return value

    def send(self, data: bytes) -> dict[str, Any]:
        self.sock.sendall(data)
        return self.line()

    def error(self, data: bytes) -> tuple[str, str]:
        answer = self.send(data)
        assert set(answer) == {"error"}, answer
        desc = answer["error"]["desc"]
        assert desc and "\n" not in desc and "Traceback" not in desc
        return answer["error"]["class"], desc


def test_hostile_clients_never_raise_in_the_host_or_stop_the_vm(tmp_path: Path) -> None:
    vm = start(tmp_path, "run", str(SMP_HELLO), "--smp", "4", "-S")
    a = Raw(vm.socket)
    assert "QMP" in a.greeting and a.greeting["QMP"]["capabilities"] == []
    assert a.error(b'{"execute": "stop"}\n')[0] == "CommandNotFound"  # not negotiated yet
    assert a.send(b'{"execute": "qmp_capabilities"}\n') == {"return": {}}
    assert a.error(b'{"execute": "qmp_capabilities"}\n')[0] == "CommandNotFound"
    junk = [
        b"not json", b"[1, 2]", b'"stop"', b"{}", b'{"execute": 5}',
        b'{"execute": "stop", "arguments": []}', b'{"execute": "stop", "extra": 1}',
        b"\xff\xfe\x00", b"[" * 50_000, b'{"execute": "info", "arguments": {"x": 1}}',
        b'{"execute": "savevm"}', b'{"execute": "savevm", "arguments": {"file": 7}}',
        b'{"execute": "savevm", "arguments": {"file": "/no/such/dir/x.snap"}}',
        b'{"execute": "savevm", "arguments": {"file": "a\\u0000b"}}',
        b"1" * 5000,
    ]  # fmt: skip
    for data in junk:
        assert a.error(data + b"\n")[0] == "GenericError", data[:40]
    assert a.error(b'{"execute": "migrate-incoming"}\n') == (
        "CommandNotFound", "there is no command 'migrate-incoming'"
    )  # fmt: skip
    assert a.error(b'{"execute": "migrate", "arguments": {"uri": "exec:rm -rf /"}}\n') == (
        "GenericError", "migrate 'exec:rm -rf /': give tcp:HOST:PORT (only TCP is served)"
    )  # fmt: skip
    assert a.error(b"x" * (4 * MAX_LINE) + b"\n")[1].startswith("a request must be at most")
    answer = a.send(b'{"execute": "query-status", "id": {"n": [1]}}\n')
    assert answer == {"return": {"running": False, "status": "paused"}, "id": {"n": [1]}}
    # Clients that go away: before the greeting is read, mid-line, and right after a
    # save was asked (the save is made; the VM, frozen, stays frozen).
    socket.socket(socket.AF_UNIX).connect(str(vm.socket))
    half = Raw(vm.socket)
    half.sock.sendall(b'{"execute": "qmp_capabilities"}\n{"execute": "co')
    half.sock.close()
    saver = Raw(vm.socket)
    saver.sock.sendall(b'{"execute": "qmp_capabilities"}\n')
    target = tmp_path / "gone.snap"
    saver.sock.sendall(json.dumps({"execute": "savevm", "arguments": {"file": str(target)}})
                       .encode() + b"\n")  # fmt: skip
    saver.sock.close()
    assert a.send(b'{"execute": "info"}\n')["return"]["status"] == "paused"
    assert a.send(b'{"execute": "cont"}\n') == {"return": {}}
    a.sock.close()
    rc, out, err = vm.finish()
    assert rc == 0, err
    assert "all 3 secondary cpus came and went; powering off" in out
    assert "Traceback" not in err and "internal error" not in err
    assert not vm.socket.exists()  # the run removes its socket


def test_monitor_options_and_client_mistakes_are_one_sentence(tmp_path: Path) -> None:
    def one_line(r: subprocess.CompletedProcess[str], code: int, text: str) -> None:
        assert r.returncode == code, r.stderr
        got = r.stderr.strip().splitlines()
        assert len(got) == 1 and got[0].startswith("pvkit: ") and text in got[0], got

    image = str(SMP_HELLO)
    one_line(pvkit("monitor", str(tmp_path / "none.sock"), "info"), 2, "no monitor socket at")
    one_line(pvkit("monitor", str(tmp_path / "none.sock"), "stop", "x"), 2, "takes no argument")
    one_line(pvkit("monitor", str(tmp_path / "none.sock"), "savevm"), 2, "needs its file")
    one_line(pvkit("run", image, "--monitor", "tcp::4444"), 2, "give unix:PATH")
    one_line(pvkit("run", image, "--monitor", "unix:"), 2, "give the socket's path")
    one_line(pvkit("run", image, "--monitor", "unix:x,telnet"), 2, "is not one pvkit knows")
    one_line(pvkit("run", image, "--monitor", f"unix:{tmp_path}/no/m.sock"), 2,
             "cannot listen there")  # fmt: skip
    plain = tmp_path / "file"
    plain.write_text("keep me")
    one_line(pvkit("run", image, "--monitor", f"unix:{plain}"), 2, "is not a socket")
    assert plain.read_text() == "keep me"
    one_line(pvkit("run", image, "-S"), 2, "-S/--freeze waits for a debugger or the monitor")
    stale = tmp_path / "stale.sock"
    socket.socket(socket.AF_UNIX).bind(str(stale))  # a socket file nobody listens on
    ran = pvkit("run", image, "--monitor", f"unix:{stale},server=on,wait=off")
    assert ran.returncode == 0 and "all 0 secondary" in ran.stdout, ran.stderr


def test_a_run_without_a_monitor_does_not_load_it() -> None:
    probe = (
        "import atexit, sys\n"
        "atexit.register(lambda: print(sorted(m for m in sys.modules if m.startswith("
        "('pvkit.monitor', 'pvkit.snapshot.save_point', 'pvkit.snapshot.standing',"
        " 'pvkit.snapshot.migration', 'pvkit.cli.incoming'))),"
        " file=sys.stderr))\n"
        "from pvkit.cli.app import main\n"
        f"main(['run', {str(SMP_HELLO)!r}])\n"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines()[-1] == "[]"
