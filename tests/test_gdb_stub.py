"""The gdb stub end to end: a real gdb-multiarch (and gdb for x86-64) in batch mode against
`pvkit run -S --gdb tcp::0`, as a developer attaches one; and a raw client that sends what
gdb never would, and goes away at the worst moments.

Every stub listens on a port of the OS's choosing (tcp::0) and announces it, so the tests
run in parallel.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from pvkit.debug.packets import Packet, PacketReader, frame

from .conftest import SMP_HELLO, X86_HELLO, assemble, spawn

GDB_MULTIARCH = shutil.which("gdb-multiarch")
GDB_X86 = shutil.which("gdb") or GDB_MULTIARCH
pytestmark = pytest.mark.skipif(
    GDB_MULTIARCH is None, reason="gdb-multiarch is not installed (scripts/setup-toolchain.sh)"
)
LISTENING = re.compile(r"gdb stub listening on 127\.0\.0\.1:(\d+)")
IMAGE_BASE = 0x4020_0000  # where the virt board loads smp-hello (its vcpu_on entry)


@dataclass
class Stub:
    proc: subprocess.Popen[str]
    port: int

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err


def start(*args: str) -> Stub:
    """`pvkit run -S --gdb tcp::0 ARGS`, once it listens."""
    proc = spawn([sys.executable, "-m", "pvkit", "run", "-S", "--gdb", "tcp::0", *args])
    assert proc.stderr is not None
    seen = []
    while True:
        line = proc.stderr.readline()
        if not line:
            proc.kill()
            pytest.fail(f"pvkit ended before listening: {''.join(seen)}")
        seen.append(line)
        if m := LISTENING.search(line):
            return Stub(proc, int(m.group(1)))


def gdb_batch(gdb: str | None, port: int, commands: list[str], timeout: float = 90) -> str:
    assert gdb is not None
    script = ["set pagination off", "set confirm off", f"target remote 127.0.0.1:{port}"]
    args = [gdb, "-nx", "-batch"]
    for command in [*script, *commands]:
        args += ["-ex", command]
    r = subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    return r.stdout + r.stderr


def values(output: str) -> list[str]:
    """The `$n = value` lines gdb printed, in order."""
    return re.findall(r"^\$\d+ = (.*)$", output, re.MULTILINE)


@pytest.fixture(scope="module")
def secondary_entry(tmp_path_factory: pytest.TempPathFactory) -> int:
    """Where smp-hello starts its secondaries: the entry of their CPU_ON (from a trace)."""
    trace = tmp_path_factory.mktemp("entry") / "t.jsonl"
    subprocess.run(
        [sys.executable, "-m", "pvkit", "run", str(SMP_HELLO), "--smp", "2", "--trace", str(trace)],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    ons = [r for r in records if r["type"] == "vcpu_on" and r["vcpu"] == 1]
    return int(ons[0]["entry"], 16)


@pytest.mark.parametrize("timing", [[], ["--deterministic"]], ids=["wall", "deterministic"])
def test_arm64_secondaries_under_gdb_multiarch(secondary_entry: int, timing: list[str]) -> None:
    stub = start(str(SMP_HELLO), "--smp", "4", *timing)
    per_cpu = ["continue", "p/x $x0", "p/x $MPIDR_EL1", "stepi", "p/x $pc", "x/1xw $pc"]
    out = gdb_batch(
        GDB_MULTIARCH,
        stub.port,
        [
            "info threads",
            f"break *{secondary_entry:#x}",
            *(per_cpu * 3),
            "info threads",
            "p $CurrentEL",
            "delete",
            "continue",
        ],
    )
    rc, console, err = stub.finish()
    assert rc == 0, (out, err)
    assert "all 3 secondary cpus came and went; powering off" in console
    assert "exited normally" in out, out
    # At the stop before the first instruction only vCPU 0 is on; at the end all four.
    assert re.search(r"\* 1\s+Thread 1 \(vCPU 0\) 0x0*40200000", out), out
    # Each vCPU is a thread from its first power-on; smp-hello's secondaries turn off
    # again one by one, and gdb still lists them, with where they powered off.
    listed = re.findall(r"^[* ] (\d)\s+Thread \d \(vCPU (\d)(, off)?\)", out, re.MULTILINE)
    assert [(t, v) for t, v, _ in listed[-4:]] == [("1", "0"), ("2", "1"), ("3", "2"), ("4", "3")]
    states = [off for *_, off in listed[-4:]]
    if timing:  # deterministic: the one order there is
        assert states == ["", ", off", ", off", ""], out
    else:  # a secondary may still be parked in its CPU_OFF call, not yet off
        assert states[0] == states[3] == "" and set(states) <= {"", ", off"}, out
    for cpu in (1, 2, 3):
        assert f"Thread {cpu + 1} hit Breakpoint 1, 0x{secondary_entry:016x}" in out, out
    got = values(out)
    image = SMP_HELLO.read_bytes()
    step_to = secondary_entry + 4
    word = int.from_bytes(image[step_to - IMAGE_BASE : step_to - IMAGE_BASE + 4], "little")
    for cpu in (1, 2, 3):
        x0, mpidr, pc = got[3 * (cpu - 1) : 3 * cpu]
        assert int(x0, 16) == cpu  # CPU_ON's context id: the CPU index
        assert int(mpidr, 16) == 0x8000_0000 | cpu  # what the guest reads: RES1 | Aff0
        assert int(pc, 16) == step_to  # one instruction on
        assert re.search(rf"0x{step_to:x}:\s+0x{word:08x}", out), out  # memory by VA
    assert got[-1] == "4"  # CurrentEL: EL1


def test_deterministic_time_is_the_same_with_a_debugger(secondary_entry: int) -> None:
    """Stops, steps and breakpoints leave every vCPU's time exactly as a run without gdb."""
    args = [str(SMP_HELLO), "--smp", "4", "--deterministic", "--host-cpus", "2", "--stats"]
    alone = subprocess.run(
        [sys.executable, "-m", "pvkit", "run", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    stub = start(*args)
    out = gdb_batch(
        GDB_MULTIARCH,
        stub.port,
        [
            f"break *{secondary_entry:#x}",
            "continue",
            "stepi",
            "stepi",
            "continue",
            "delete",
            "continue",
        ],
    )
    rc, _console, err = stub.finish()
    assert rc == 0 and alone.returncode == 0, (out, err)

    def times(text: str) -> list[str]:
        return re.findall(r"pvkit: vcpu \d+ run_ns=\d+ steal_ns=\d+ idle_ns=\d+", text)

    assert len(times(err)) == 4 and times(err) == times(alone.stderr), (err, alone.stderr)


def _symbol(elf: Path, name: str) -> int:
    with elf.open("rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        return int(symtab.get_symbol_by_name(name)[0]["st_value"])  # type: ignore[union-attr]


def test_x86_application_processors_under_gdb() -> None:
    ap_main = _symbol(X86_HELLO, "guest_ap_main")
    go = _symbol(X86_HELLO, "go")
    stub = start(str(X86_HELLO), "--smp", "4")
    per_cpu = ["continue", "p $rdi", "p/x $cr0", "stepi", "p/x $rip", "x/1xb $rip"]
    out = gdb_batch(
        GDB_X86,
        stub.port,
        [
            "set architecture i386:x86-64",
            f"hbreak *{ap_main:#x}",
            *(per_cpu * 3),
            "info threads",
            "delete",
            f"watch *(int *){go:#x}",
            "continue",
            "p/x $rip",
            "delete",
            "continue",
        ],
    )
    rc, console, err = stub.finish()
    assert rc == 1, (out, err)  # isa-debug-exit 0: status (0 << 1) | 1, the guest's "done"
    assert "x86-hello: done" in console
    assert "exited with code 01" in out, out
    got = values(out)
    with X86_HELLO.open("rb") as f:
        text = ELFFile(f).get_section_by_name(".text")
        code = text.data()
        text_base = text["sh_addr"]
    for cpu in (1, 2, 3):
        assert f"hit Breakpoint 1, 0x{ap_main:016x}" in out, out
        rdi, cr0, rip = got[3 * (cpu - 1) : 3 * cpu]
        assert int(rdi) == cpu  # guest_ap_main(cpu)
        assert int(cr0, 16) & 0x8000_0001 == 0x8000_0001  # paging and protection on
        assert ap_main < int(rip, 16) <= ap_main + 15  # one instruction on
        byte = code[int(rip, 16) - text_base]
        assert re.search(rf"0x{int(rip, 16):x}[^:]*:\s+0x{byte:02x}", out), out
    assert all(re.search(rf"Thread {t} \(vCPU {t - 1}", out) for t in (1, 2, 3, 4)), out
    # The boot CPU releases the others: gdb sees the store, on thread 1, as it happened.
    assert re.search(r"Old value = 0\s+New value = 1", out), out


# Stores 1..5 to 0x48000000 (reading 0x48000008 after each), counts x4 up to x5, powers off.
LOOP_GUEST = """
  movz x1, #0x4800, lsl #16
  mov x2, #0
1: add x2, x2, #1
  str x2, [x1]
  ldr x3, [x1, #8]
  cmp x2, #5
  b.ne 1b
2: add x4, x4, #1
  cmp x4, x5
  b.ne 2b
  movz w0, #0x0008
  movk w0, #0x8400, lsl #16
  hvc #0
"""


@pytest.mark.parametrize("timing", [[], ["--deterministic"]], ids=["wall", "deterministic"])
def test_watchpoints_and_ctrl_c(tmp_path: Path, timing: list[str]) -> None:
    """Write and read watchpoints stop after the access; gdb's Ctrl-C (SIGINT to gdb)
    stops a spinning VM, which then runs on to a clean exit."""
    stub = start(str(assemble(tmp_path, LOOP_GUEST)), *timing)
    script = ["watch *(long *)0x48000000", "continue", "continue", "p $x2", "delete"]
    script += ["rwatch *(long *)0x48000008", "continue", "p/x $pc", "delete"]
    script += ["set $x5 = 4000000000", "echo counting\\n", "continue"]
    script += ["p $x4 > 0", "set $x5 = $x4 + 10", "continue"]
    assert GDB_MULTIARCH is not None
    args = [GDB_MULTIARCH, "-nx", "-batch", "-ex", "set pagination off"]
    args += ["-ex", f"target remote 127.0.0.1:{stub.port}"]
    for command in script:
        args += ["-ex", command]
    gdb = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL
    )
    assert gdb.stdout is not None
    seen = []
    while not seen or seen[-1] != "counting\n":  # gdb goes on to the long count's continue
        line = gdb.stdout.readline()
        assert line, "".join(seen)
        seen.append(line)
    time.sleep(1)  # the count to 4e9 takes many seconds: it is counting by then
    gdb.send_signal(signal.SIGINT)
    rest, _ = gdb.communicate(timeout=60)
    out = "".join(seen) + rest
    rc, _console, err = stub.finish()
    assert rc == 0, (out, err)
    assert re.search(r"Old value = 0\s+New value = 1", out), out
    assert re.search(r"Old value = 1\s+New value = 2", out), out
    assert "Hardware read watchpoint 2" in out and "Value = 0" in out, out
    assert "Program received signal SIGINT" in out, out
    assert "exited normally" in out, out
    got = values(out)
    assert got[0] == "2"
    assert int(got[1], 16) in range(0x4008_0014, 0x4008_001C)  # after the load
    assert got[2] == "1"  # the count was running


class Client:
    """A raw RSP client: what gdb sends, and what it never would."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.reader = PacketReader()
        self.pending: list[Packet] = []

    def send(self, raw: bytes) -> None:
        self.sock.sendall(raw)

    def packet(self) -> bytes:
        while not self.pending:
            data = self.sock.recv(65536)
            assert data, "the stub closed the connection"
            self.pending += [e for e in self.reader.feed(data) if isinstance(e, Packet)]
        return self.pending.pop(0).payload

    def ask(self, payload: bytes) -> bytes:
        self.send(frame(payload))
        return self.packet()

    def close(self) -> None:
        self.sock.close()


def test_malformed_packets_and_disconnects_never_stop_the_vm(tmp_path: Path) -> None:
    stub = start(str(assemble(tmp_path, LOOP_GUEST)))
    c = Client(stub.port)
    assert c.ask(b"?") == b"T05thread:1;"
    c.send(b"$m40080000,4#00")  # a bad checksum: asked again, not answered
    assert c.sock.recv(1) == b"-"
    c.send(b"noise\xff\x00}}}*#$")  # junk between packets, a packet cut off by the next
    bad = [
        b"mzz,1", b"m", b"m1,", b"M40080000,4:zz", b"X40080000,4", b"p", b"pfffffff",
        b"P0=12", b"Gzz", b"Hg77", b"Hx1", b"T77", b"Tzz", b"Z0,zz,4", b"Z0", b"z0,1",
        b"Z2,48000000,0", b"Z2,fffffffffffffffc,8", b"Z0,10000000000000000,4",
        b"qXfer:features:read:target.xml:zz", b"qThreadExtraInfo,99",
        b"vCont;t", b"vCont;x:1", b"vCont;", b"C", b"sz",
    ]  # fmt: skip
    for payload in bad:
        assert c.ask(payload).startswith(b"E"), payload
    for payload in [b"Z5,0,0", b"qFoo", b"vFoo", b"!", b"@", b"\x7f" * 100]:
        assert c.ask(payload) == b"", payload  # not a command pvkit has: the empty reply
    assert c.ask(b"m0,4") == b"E14"  # not RAM
    assert c.ask(b"mffffffffffffff00,400") == b"E14"  # wraps past the top of the space
    assert c.ask(b"m40080000," + b"f" * 12).startswith(b"0100a9d2")  # huge: cut to fit
    assert c.ask(b"m40080000,4") == bytes.fromhex("0100a9d2").hex().encode()
    assert c.ask(b"X48000010,4:#$ab") == b"OK"  # binary, escaped on the wire
    assert c.ask(b"m48000010,4") == b"#$ab".hex().encode()
    c.send(b"$" + b"a" * 100_000 + b"#00")  # longer than any packet: dropped
    assert c.ask(b"qC") == b"QC1"
    c.close()  # gone while the VM stands: it runs on, but this client comes back
    c = Client(stub.port)
    assert c.ask(b"?") == b"T05thread:1;"
    assert c.ask(b"P5=" + (10**12).to_bytes(8, "little").hex().encode()) == b"OK"  # x5
    c.send(frame(b"c"))
    time.sleep(0.3)
    c.send(b"\x03")  # Ctrl-C while it counts
    assert c.packet() == b"T02thread:1;"
    assert c.ask(b"Z0,40080028,4") == b"OK"  # on the power-off, then gone while running
    c.send(frame(b"c"))
    c.close()
    c = Client(stub.port)  # a third client: the breakpoint is gone, x5 stays
    assert c.ask(b"?").startswith(b"T05thread:1;")
    assert c.ask(b"P4=" + (0).to_bytes(8, "little").hex().encode()) == b"OK"  # x4
    assert c.ask(b"P5=" + (5).to_bytes(8, "little").hex().encode()) == b"OK"  # to 5, then off
    assert c.ask(b"QStartNoAckMode") == b"OK"
    c.send(frame(b"vCont;c"))
    assert c.packet() == b"W00"  # the guest powered off: gdb hears how it ended
    rc, _console, err = stub.finish()
    assert rc == 0, err
    assert "Traceback" not in err, err


def test_kill_from_gdb_ends_the_run(tmp_path: Path) -> None:
    stub = start(str(assemble(tmp_path, "1: b 1b")))
    c = Client(stub.port)
    assert c.ask(b"?") == b"T05thread:1;"
    c.send(frame(b"k"))
    rc, _console, err = stub.finish()
    assert rc == 130 and "killed from the debugger" in err, err


def test_gdb_options_are_checked() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pvkit", "run", str(SMP_HELLO), *args],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )

    r = run("-S")
    assert r.returncode == 2 and "-S/--freeze waits for a debugger" in r.stderr
    r = run("--gdb", "udp::5")
    assert r.returncode == 2 and "give tcp::PORT or tcp:HOST:PORT" in r.stderr
    r = run("--gdb", "tcp::99999")
    assert r.returncode == 2 and "from 0 to 65535" in r.stderr
    r = run("--gdb", "tcp::1", "-s")
    assert r.returncode == 2 and "-s is --gdb tcp::1234" in r.stderr
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        r = run("--gdb", f"tcp::{port}")
    assert r.returncode == 2 and f"cannot listen for gdb on 127.0.0.1:{port}" in r.stderr
    assert "Traceback" not in r.stderr
    r = run("--gdb", "tcp::0", "-smp", "2")  # a stub nobody attaches to costs nothing
    assert r.returncode == 0 and "all 1 secondary cpus came and went" in r.stdout
