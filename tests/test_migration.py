"""Live migration over TCP, source and destination as two pvkit processes on loopback.

A deterministic guest migrated at a point of its clock gives, on the source's console
followed by the destination's, exactly the uninterrupted run's console, and every vCPU
the same run, steal and idle nanoseconds; a wall-clock guest moved while it runs
finishes its work on the destination. Before any RAM moves the destination answers the
offer with restore's compatibility check: a refusal is one sentence on both sides and
the source runs on, as it does when the connection breaks before the destination has
taken the VM.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pvkit.snapshot.migration.stream import MAGIC, Kind

from .conftest import PREBUILT, SMP_HELLO, pvkit, spawn
from .test_monitor import start
from .test_snapshot_guests import times

STEAL = str(PREBUILT / "steal.Image")
STEAL_X86 = str(PREBUILT / "steal-x86.elf")
DIRTY = str(PREBUILT / "dirty.Image")
WAITING = re.compile(r"waiting for a migration on tcp:([\d.]+):(\d+)")
MIGRATED = re.compile(r"pvkit: migrated: migrated to tcp:[\d.]+:\d+ at (\d+) ns: "
                      r"downtime ([\d.]+) ms, (\d+) bytes sent")  # fmt: skip
PRECOPY = re.compile(r"\((\d+) pages in (\d+) pre-copy rounds?, (\d+) stopped\)")


@dataclass
class Destination:
    proc: subprocess.Popen[str]
    host: str
    port: int
    seen: str

    @property
    def uri(self) -> str:
        return f"tcp:{self.host}:{self.port}"

    def finish(self) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=120)
        return self.proc.returncode, out, self.seen + err


def destination(*args: str, host: str = "127.0.0.1", inside: list[str] = []) -> Destination:  # noqa: B006
    """`pvkit run --incoming tcp:HOST:0 ARGS` (run `inside` a namespace), once it listens."""
    proc = spawn(
        [*inside, sys.executable, "-m", "pvkit", "run", "--incoming", f"tcp:{host}:0", *args]
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    m = WAITING.search(line)
    if m is None:
        proc.kill()
        pytest.fail(f"the destination did not listen: {line}{proc.stderr.read()}")
    return Destination(proc, m.group(1), int(m.group(2)), line)


def one_sentence(stderr: str, status: int, returncode: int, says: str) -> None:
    assert returncode == status, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("pvkit: ") and says in last, stderr
    assert "Traceback" not in stderr


# -- deterministic guests: source + destination = the uninterrupted run -------------------
@pytest.mark.parametrize(
    ("image", "args", "at_ms", "cpus"),
    [(STEAL, ["--smp", "4"], "300", 4), (STEAL_X86, ["--smp", "2"], "150", 2)],
    ids=["arm64", "x86_64"],
)
def test_a_deterministic_guest_migrated_equals_the_uninterrupted_run(
    image: str, args: list[str], at_ms: str, cpus: int
) -> None:
    run = [image, *args, "--host-cpus", "1", "--deterministic", "--stats"]
    whole = pvkit("run", *run)
    dst = destination("--stats")
    src = pvkit("run", *run, "--migrate-at", at_ms, "--migrate-to", dst.uri)
    status, out, err = dst.finish()
    assert src.returncode == 0, src.stderr
    m = MIGRATED.search(src.stderr)
    assert m is not None, src.stderr
    assert int(m.group(1)) >= int(at_ms) * 1_000_000  # the first slice at or after MS
    assert float(m.group(2)) > 0 and int(m.group(3)) > 0
    assert "incoming: took the VM" in err
    assert status == whole.returncode, err
    assert src.stdout + out == whole.stdout
    assert f"steal: cpu {cpus - 1} stolen" in out  # the guest's work went on there
    assert times(err) == times(whole.stderr) and len(times(err)) == cpus


def test_a_wall_clock_guest_moved_by_the_monitor_finishes_on_the_destination(
    tmp_path: Path,
) -> None:
    """The steal guest works 200 ms of its clock on each of 4 vCPUs sharing one host
    CPU: a migration 50 ms into the run lands mid-run."""
    dst = destination()
    src = start(tmp_path, "run", STEAL, "--smp", "4", "--host-cpus", "1")
    assert src.ok("migrate", uri=dst.uri) == {}  # QMP's: the move goes on after the reply
    info = src.migration_end()
    assert info["status"] == "completed", info
    assert set(info) == {"status", "total-time", "downtime", "ram", "uri", "downtime-ms",
                         "clock-ns", "precopy-pages", "stopped-pages"}  # fmt: skip
    assert info["uri"] == dst.uri and info["ram"]["transferred"] > 0 and info["downtime-ms"] > 0
    # RAM went over while the guest ran, and the guest's image was in it
    assert info["ram"]["dirty-sync-count"] >= 1 and info["precopy-pages"] > 0
    assert info["ram"]["normal"] == info["precopy-pages"] + info["stopped-pages"]
    # It stands here now, as QEMU's source does, until quit ends the run with the report.
    assert src.ok("query-status") == {"running": False, "status": "postmigrate"}
    assert src.ask("cont")["error"]["desc"] == (
        "the VM runs on the destination now: quit ends this run"
    )
    src.ok("quit")
    s_status, s_out, s_err = src.finish()
    assert s_status == 0 and MIGRATED.search(s_err), s_err
    d_status, d_out, d_err = dst.finish()
    assert d_status == 0 and "pvkit: shutdown:" in d_err, d_err
    out = s_out + d_out
    assert re.match(r"steal: 4 cpus, 200 ms of work each", out)
    stolen = re.findall(r"^steal: cpu (\d+) stolen (\d+) ns of (\d+) ns elapsed", out, re.M)
    assert sorted(int(c) for c, _, _ in stolen) == [0, 1, 2, 3]
    assert all(int(elapsed) >= 200_000_000 for _, _, elapsed in stolen)  # the clock went on


def checksums(out: str) -> list[str]:
    return re.findall(r"^dirty: cpu \d+ checksum [0-9a-f]{16}$", out, re.M)


# -- pre-copy: RAM moves while the guest writes it -----------------------------------------
@pytest.mark.parametrize("spin", ["100000", "1000"], ids=["converging", "outpacing"])
def test_a_guest_rewriting_its_memory_moves_while_it_runs_and_loses_no_write(spin: str) -> None:
    """dirty.Image's 4 vCPUs rewrite an 8 MiB buffer all through the copy; the checksums
    they print at the end are the uninterrupted run's only if every page written after
    it was sent was sent again. `outpacing`: a pass is 100 times shorter, so the rounds
    never catch up and the rest goes with the VM stopped. The guest works about 3 s, so the
    move (at 400 ms, a second or so of pre-copy on a busy machine) is over before it ends."""
    run = [DIRTY, "--smp", "4", "--append", f"spin={spin} passes={600_000_000 // int(spin)}"]
    whole = pvkit("run", *run)
    assert len(checksums(whole.stdout)) == 4, whole.stderr
    dst = destination()
    src = pvkit("run", *run, "--migrate-at", "400", "--migrate-to", dst.uri)
    status, out, err = dst.finish()
    assert src.returncode == 0 and status == 0, src.stderr + err
    m = PRECOPY.search(src.stderr)
    assert MIGRATED.search(src.stderr) and m is not None, src.stderr
    precopied, rounds, stopped = (int(g) for g in m.groups())
    assert rounds >= 1 and precopied > 0  # RAM went while the guest ran
    assert stopped > 0  # and what it wrote during the last round went with it stopped
    assert src.stdout == "" or not checksums(src.stdout)  # the end happened there
    assert checksums(out) == checksums(whole.stdout)


# -- refusals and broken connections: the source runs on ----------------------------------
def test_a_destination_that_cannot_serve_the_guest_refuses_before_ram_moves() -> None:
    dst = destination("--disable", "stolen-time")
    src = pvkit("run", STEAL, "--smp", "2", "--host-cpus", "1", "--deterministic",
                "--migrate-at", "100", "--migrate-to", dst.uri)  # fmt: skip
    d_status, _d_out, d_err = dst.finish()
    one_sentence(d_err, 2, d_status, "refused the incoming guest: service 'stolen-time'")
    assert "this host leaves it out" in d_err
    # The source said why in one line and ran to its own end.
    refused = [ln for ln in src.stderr.splitlines() if ln.startswith("pvkit: migrate:")]
    assert len(refused) == 1 and "refused the guest: service 'stolen-time'" in refused[0]
    assert refused[0].endswith("the VM runs on here")
    assert src.returncode == 0 and "pvkit: shutdown:" in src.stderr
    whole = pvkit("run", STEAL, "--smp", "2", "--host-cpus", "1", "--deterministic")
    assert src.stdout == whole.stdout


class DroppingDestination:
    """A destination that accepts the offer, then closes the connection as the first
    message of `drop_at` arrives. Speaking stream 1.0 it gets no pre-copy: the state
    comes at once, the source stood for it and must run on; speaking 1.1 it drops the
    first PAGES, while the guest runs and its writes are being logged."""

    def __init__(self, minor: int = 0, drop_at: Kind = Kind.STATE) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.minor, self.drop_at = minor, drop_at

    def serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.sendall(MAGIC + struct.pack("<HH", 1, self.minor))
            _recv(conn, 12)
            kind, length = struct.unpack("<BQ", _recv(conn, 9))
            assert kind == Kind.OFFER
            _recv(conn, length)
            conn.sendall(struct.pack("<BQ", Kind.ACCEPT, 0))
            kind, _length = struct.unpack("<BQ", _recv(conn, 9))
            assert kind == self.drop_at
        self.listener.close()


def _recv(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        assert chunk
        data += chunk
    return data


def test_a_connection_that_drops_mid_copy_leaves_the_source_running(tmp_path: Path) -> None:
    import threading

    peer = DroppingDestination()
    server = threading.Thread(target=peer.serve, daemon=True)
    server.start()
    src = start(tmp_path, "run", str(SMP_HELLO), "--smp", "4", "-S")
    assert src.ok("migrate", uri=f"tcp:127.0.0.1:{peer.port}") == {}
    server.join(30)
    failed = src.migration_end()
    assert failed["status"] == "failed", failed
    assert failed["error-desc"].startswith(f"migration to tcp:127.0.0.1:{peer.port} failed: ")
    assert src.ok("query-status") == {"running": False, "status": "paused"}  # it stood before
    nobody = socket.create_server(("127.0.0.1", 0))
    port = nobody.getsockname()[1]
    nobody.close()
    assert src.ok("migrate", uri=f"tcp:127.0.0.1:{port}") == {}
    assert "cannot reach a destination" in src.migration_end()["error-desc"]
    src.ok("cont")
    status, out, err = src.finish()
    assert status == 0 and "all 3 secondary" in out, err


def test_while_a_move_is_on_the_monitor_refuses_another_and_savevm_and_answers_the_rest(
    tmp_path: Path,
) -> None:
    """A destination that takes the connection and says nothing keeps the move active."""
    silent = socket.create_server(("127.0.0.1", 0))
    src = start(tmp_path, "run", str(SMP_HELLO), "--smp", "2", "-S")
    assert src.ok("query-migrate") == {}  # no migration yet, as QEMU answers
    uri = f"tcp:127.0.0.1:{silent.getsockname()[1]}"
    assert src.ok("migrate", uri=uri) == {}
    conn, _ = silent.accept()
    assert src.ok("query-migrate")["status"] == "active"
    for command, arguments in (("migrate", {"uri": uri}), ("savevm", {"file": "x.snap"})):
        assert src.ask(command, **arguments)["error"]["desc"] == (
            f"{command}: a migration is in progress (query-migrate follows it)"
        )
    assert src.ok("query-status") == {"running": False, "status": "paused"}  # -S holds it
    conn.close()  # the move fails; the VM stays as the monitor left it
    assert src.migration_end()["status"] == "failed"
    silent.close()
    src.ok("cont")
    status, out, err = src.finish()
    assert status == 0 and "all 1 secondary" in out, err


def test_the_cli_client_waits_for_the_move_and_prints_how_it_ended(tmp_path: Path) -> None:
    """`pvkit monitor PATH migrate URI` asks query-migrate until the move is over, as HMP's
    migrate waits; then the source stands until quit."""
    dst = destination()
    src = start(tmp_path, "run", STEAL, "--smp", "2", "--host-cpus", "1")
    r = pvkit("monitor", str(src.socket), "migrate", dst.uri)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)["return"]
    assert info["status"] == "completed" and info["uri"] == dst.uri
    assert pvkit("monitor", str(src.socket), "quit").returncode == 0
    s_status, _s_out, s_err = src.finish()
    assert s_status == 0 and MIGRATED.search(s_err), s_err
    d_status, d_out, d_err = dst.finish()
    assert d_status == 0 and "steal: cpu 1 stolen" in d_out, d_err


def test_a_connection_that_drops_during_pre_copy_leaves_the_guest_running_unharmed() -> None:
    import threading

    peer = DroppingDestination(minor=1, drop_at=Kind.PAGES)
    server = threading.Thread(target=peer.serve, daemon=True)
    server.start()
    run = [DIRTY, "--smp", "2", "--append", "spin=10000 passes=20000"]
    src = pvkit("run", *run, "--migrate-at", "200", "--migrate-to", f"tcp:127.0.0.1:{peer.port}")
    server.join(30)
    failed = [ln for ln in src.stderr.splitlines() if ln.startswith("pvkit: migrate:")]
    assert len(failed) == 1 and "failed: " in failed[0], src.stderr
    assert failed[0].endswith("the VM runs on here")
    assert src.returncode == 0 and "pvkit: shutdown:" in src.stderr
    assert checksums(src.stdout) == checksums(pvkit("run", *run).stdout)


def test_a_hostile_source_gets_one_sentence_and_nothing_runs() -> None:
    junk = destination()
    with socket.create_connection(("127.0.0.1", junk.port)) as conn:
        conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
    status, _out, err = junk.finish()
    one_sentence(err, 2, status, "is not a pvkit migration peer")
    huge = destination()
    with socket.create_connection(("127.0.0.1", huge.port)) as conn:
        conn.sendall(MAGIC + struct.pack("<HH", 1, 0) + struct.pack("<BQ", Kind.OFFER, 1 << 60))
    status, _out, err = huge.finish()
    one_sentence(err, 2, status, "at most")


def test_migration_option_mistakes_are_one_sentence() -> None:
    image = str(SMP_HELLO)
    r = pvkit("run", image, "--incoming", "tcp:127.0.0.1:0")
    one_sentence(r.stderr, 2, r.returncode, "--incoming takes the VM from the migration stream")
    r = pvkit("run", "--incoming", "tcp:127.0.0.1:0", "--smp", "2")
    one_sentence(r.stderr, 2, r.returncode, "--smp is the source's")
    r = pvkit("run", "--incoming", "unix:/tmp/x")
    one_sentence(r.stderr, 2, r.returncode, "give tcp:HOST:PORT")
    r = pvkit("run", image, "--migrate-at", "5")
    one_sentence(r.stderr, 2, r.returncode, "--migrate-at and --migrate-to go together")
    r = pvkit("run", image, "--migrate-at", "5", "--migrate-to", "tcp::99")
    one_sentence(r.stderr, 2, r.returncode, "give the destination's host and port")
    r = pvkit("run", image, "--migrate-at", "5", "--migrate-to", "tcp:h:1", "--save-at", "1",
              "--save", "x")  # fmt: skip
    one_sentence(r.stderr, 2, r.returncode, "not both")


def test_a_run_without_incoming_or_monitor_does_not_load_migration() -> None:
    probe = (
        "import atexit, sys\n"
        "atexit.register(lambda: print(sorted(m for m in sys.modules if m.startswith("
        "('pvkit.snapshot.migration', 'pvkit.cli.incoming', 'pvkit.monitor'))),"
        " file=sys.stderr))\n"
        "from pvkit.cli.app import main\n"
        f"main(['run', {str(SMP_HELLO)!r}])\n"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines()[-1] == "[]"


def test_an_x86_guest_moved_from_intel_to_amd_has_its_hypercall_site_patched_there(
    tmp_path: Path,
) -> None:
    """Seed 004: the guest keeps its CPU model (Intel), the host's native instruction
    changes: its VMCALL site, native at boot, is patched to VMMCALL on the destination."""
    bench = str(PREBUILT / "bench-x86.elf")
    run = [bench, "--deterministic", "--slice-ms", "1", "--append", "vmcall 999 300000"]
    whole = pvkit("run", *run)
    trace = tmp_path / "dst.jsonl"
    dst = destination("--cpu-vendor", "amd", "--trace", str(trace))
    src = pvkit("run", *run, "--cpu-vendor", "intel", "--migrate-at", "3", "--migrate-to",
                dst.uri)  # fmt: skip
    status, out, err = dst.finish()
    assert src.returncode == 0 and MIGRATED.search(src.stderr), src.stderr
    assert "bench: begin" in src.stdout and "bench: end" in out
    assert src.stdout + out == whole.stdout and status == whole.returncode, err
    patches = [e for e in map(json.loads, trace.read_text().splitlines()) if e["type"] == "patch"]
    assert [(p["old"], p["new"]) for p in patches] == [("0f 01 c1", "0f 01 d9")]


def _netns(name: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", name, *cmd], capture_output=True, text=True)


@pytest.fixture
def two_hosts() -> Iterator[tuple[str, str]]:
    """Two network namespaces joined by a veth pair: 10.77.0.1 (source), 10.77.0.2."""
    tag = f"pvk{os.getpid() % 100000}"
    a, b = f"{tag}a", f"{tag}b"
    made = subprocess.run(["ip", "netns", "add", a], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"network namespaces cannot be made here: {made.stderr.strip()}")
    try:
        steps = [
            ["ip", "netns", "add", b],
            ["ip", "link", "add", f"{tag}x", "netns", a, "type", "veth", "peer", "name",
             f"{tag}y", "netns", b],
            ["ip", "-n", a, "addr", "add", "10.77.0.1/24", "dev", f"{tag}x"],
            ["ip", "-n", b, "addr", "add", "10.77.0.2/24", "dev", f"{tag}y"],
            ["ip", "-n", a, "link", "set", f"{tag}x", "up"],
            ["ip", "-n", b, "link", "set", f"{tag}y", "up"],
            ["ip", "-n", a, "link", "set", "lo", "up"],
            ["ip", "-n", b, "link", "set", "lo", "up"],
        ]  # fmt: skip
        for step in steps:
            subprocess.run(step, check=True, capture_output=True)
        yield a, b
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_a_4_vcpu_guest_migrates_between_two_network_namespaces(
    two_hosts: tuple[str, str],
) -> None:
    a, b = two_hosts
    run = [STEAL, "--smp", "4", "--host-cpus", "1", "--deterministic", "--stats"]
    whole = pvkit("run", *run)
    dst = destination("--stats", host="10.77.0.2", inside=["ip", "netns", "exec", b])
    src = _netns(a, sys.executable, "-m", "pvkit", "run", *run, "--migrate-at", "300",
                 "--migrate-to", dst.uri)  # fmt: skip
    status, out, err = dst.finish()
    assert src.returncode == 0, src.stderr
    m = MIGRATED.search(src.stderr)
    assert m is not None and "10.77.0.2" in src.stderr and int(m.group(3)) > 0
    assert status == 0 and src.stdout + out == whole.stdout
    assert times(err) == times(whole.stderr) and len(times(err)) == 4
