"""The host side of the console: the line-buffered sink and the stdin reader (pipe and pty)."""

from __future__ import annotations

import io
import os
import select
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pvkit.devices.console import BufferedConsole, HostInput

ROOT = Path(__file__).resolve().parent.parent


class Stream(io.BytesIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.flushes = 0

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.writes.append(bytes(data))
        return super().write(data)

    def flush(self) -> None:
        self.flushes += 1


class Collector:
    def __init__(self) -> None:
        self.data = bytearray()
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)

    def __call__(self, data: bytes) -> None:
        with self.changed:
            self.data += data
            self.changed.notify_all()

    def wait_for(self, expected: bytes, timeout: float = 5.0) -> bytes:
        with self.changed:
            self.changed.wait_for(lambda: len(self.data) >= len(expected), timeout)
            return bytes(self.data)


# -- BufferedConsole ---------------------------------------------------------------------------
def test_buffered_console_writes_nothing_until_a_newline_then_the_whole_line() -> None:
    s = Stream()
    con = BufferedConsole(s, linger_s=None)
    for b in b"hello":
        con(bytes((b,)))
    assert s.writes == []
    con(b"\n")
    assert s.writes == [b"hello\n"] and s.flushes == 1


def test_buffered_console_keeps_the_text_after_the_last_newline() -> None:
    s = Stream()
    con = BufferedConsole(s, linger_s=None)
    con(b"a\nb\nc")
    assert s.writes == [b"a\nb\n"]
    con.flush()
    assert s.writes == [b"a\nb\n", b"c"]


def test_buffered_console_close_flushes_and_then_writes_through() -> None:
    s = Stream()
    con = BufferedConsole(s, linger_s=None)
    con(b"prompt# ")
    con.close()
    assert s.getvalue() == b"prompt# "
    con(b"x")
    assert s.getvalue() == b"prompt# x"


def test_buffered_console_writes_out_when_the_limit_is_reached() -> None:
    s = Stream()
    con = BufferedConsole(s, limit=4, linger_s=None)
    con(b"abc")
    assert s.writes == []
    con(b"d")
    assert s.writes == [b"abcd"]


def test_buffered_console_from_many_threads_keeps_every_line_whole() -> None:
    s = Stream()
    con = BufferedConsole(s, linger_s=None)

    def writer(tag: bytes) -> None:
        for _ in range(200):
            con(tag * 10 + b"\n")

    threads = [threading.Thread(target=writer, args=(bytes((65 + i,)),)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = s.getvalue().splitlines()
    assert len(lines) == 800 and all(len(set(line)) == 1 and len(line) == 10 for line in lines)


def test_buffered_console_survives_a_closed_stream() -> None:
    s = Stream()
    s.close()
    con = BufferedConsole(s, linger_s=None)
    con(b"lost\n")
    assert isinstance(con.error, ValueError)
    con(b"more\n")  # no exception reaches the UART


# -- HostInput over a pipe, /dev/null, a closed descriptor ---------------------------------------
def test_host_input_reads_a_pipe_until_eof() -> None:
    r, w = os.pipe()
    got = Collector()
    try:
        with HostInput(got, fd=r) as host:
            assert not host.is_terminal and not host.raw
            os.write(w, b"abc")
            assert got.wait_for(b"abc") == b"abc"
            os.write(w, b"def")
            os.close(w)
            w = -1
            assert host.wait(5)
            assert host.error is None
        assert bytes(got.data) == b"abcdef"
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_host_input_on_dev_null_ends_at_once_without_data() -> None:
    fd = os.open(os.devnull, os.O_RDONLY)
    got = Collector()
    try:
        host = HostInput(got, fd=fd).start()
        assert host.wait(5) and got.data == b""
        host.close()
    finally:
        os.close(fd)


def test_host_input_on_a_closed_descriptor_ends_without_raising() -> None:
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    host = HostInput(Collector(), fd=fd).start()
    assert host.wait(5)
    host.close()


def test_host_input_without_a_usable_stdin_ends_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", None)
    host = HostInput(Collector()).start()
    assert host.wait(1) and not host.is_terminal
    host.close()


def test_close_stops_a_reader_that_is_still_waiting() -> None:
    r, w = os.pipe()
    try:
        host = HostInput(Collector(), fd=r).start()
        assert not host.wait(0.05)
        host.close()
        assert host.wait(0)
    finally:
        os.close(r)
        os.close(w)


# -- HostInput over a pty ------------------------------------------------------------------------
@pytest.fixture
def pty() -> Iterator[tuple[int, int]]:
    master, slave = os.openpty()
    yield master, slave
    os.close(master)
    os.close(slave)


def _lflag(fd: int) -> int:
    return int(termios.tcgetattr(fd)[3])


def test_a_terminal_gets_raw_mode_with_isig_kept_and_is_restored_on_close(
    pty: tuple[int, int],
) -> None:
    master, slave = pty
    original = termios.tcgetattr(slave)
    got = Collector()
    host = HostInput(got, fd=slave).start()
    assert host.is_terminal and host.raw
    attrs = termios.tcgetattr(slave)
    assert not attrs[3] & (termios.ECHO | termios.ICANON)
    assert attrs[3] & termios.ISIG
    assert not attrs[0] & (termios.ICRNL | termios.IXON)
    # No line discipline: a lone byte and a CR arrive at once, untranslated, and unechoed.
    os.write(master, b"k\r")
    assert got.wait_for(b"k\r") == b"k\r"
    assert select.select([master], [], [], 0.1)[0] == []
    host.close()
    assert termios.tcgetattr(slave) == original and not host.raw


def test_a_terminal_is_restored_when_the_with_block_raises(pty: tuple[int, int]) -> None:
    _master, slave = pty
    original = termios.tcgetattr(slave)
    with pytest.raises(RuntimeError), HostInput(Collector(), fd=slave):
        assert not _lflag(slave) & termios.ICANON
        raise RuntimeError("guest crashed")
    assert termios.tcgetattr(slave) == original


_CHILD = """
import sys, threading
from pvkit.devices.console import HostInput
got = threading.Event()
HostInput(lambda data: got.set() if b"q" in data else None).start()
print("ready", flush=True)
got.wait(10)
"""


def test_a_terminal_is_restored_at_normal_exit_without_close(pty: tuple[int, int]) -> None:
    master, slave = pty
    original = termios.tcgetattr(slave)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD], stdin=slave, stdout=subprocess.PIPE, env=env
    )
    assert child.stdout is not None
    try:
        assert child.stdout.readline() == b"ready\n"
        assert not _lflag(slave) & (termios.ECHO | termios.ICANON)  # raw while it runs
        os.write(master, b"q")
        assert child.wait(10) == 0
    finally:
        child.kill()
        child.stdout.close()
    assert termios.tcgetattr(slave) == original


def test_a_prompt_without_a_newline_appears_once_the_guest_goes_quiet() -> None:
    # A shell's "# " or U-Boot's "=> " must reach the user, as on a terminal.
    sink = io.BytesIO()
    console = BufferedConsole(sink, linger_s=0.01)
    console(b"line\n")
    console(b"=> ")
    deadline = time.monotonic() + 5
    while sink.getvalue() != b"line\n=> " and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sink.getvalue() == b"line\n=> "
    console.close()
