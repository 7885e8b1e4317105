"""The host side of a guest console: a buffered output sink and a stdin reader.

`BufferedConsole` is a UART's `output` callable. The UART hands it one byte at a time;
writing each to the host stream would cost a system call per byte, so it keeps them and
writes whole lines (at each b"\\n"), when `limit` bytes are waiting, and on `flush()` and
`close()`. A partial line (a shell's or U-Boot's prompt) is written once no byte has come
for `linger_s`, by a flusher thread of its own, as a terminal shows a prompt at once.

`HostInput` reads the host's stdin (or any file descriptor) on a daemon thread and hands
what it reads to a callback, typically a UART's `feed`. When the descriptor is a terminal
it is put in raw mode for the guest (no echo, no line editing, no CR/NL translation, no
XON/XOFF) but keeps ISIG, so Ctrl-C still interrupts pvkit; the original settings come
back on `close()`, at interpreter exit (atexit) and when a `with` block ends by an
exception. Anything else (a pipe, a file, /dev/null, a closed descriptor) is read until
end of file and its settings are never touched.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import sys
import termios
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol

DEFAULT_LIMIT = 4096
DEFAULT_LINGER_S = 0.02
READ_CHUNK = 4096
_JOIN_TIMEOUT_S = 1.0


class BinarySink(Protocol):
    def write(self, data: bytes, /) -> object: ...

    def flush(self) -> object: ...


class BufferedConsole:
    """Collects guest output and writes it to `stream` a line at a time; thread-safe."""

    def __init__(
        self,
        stream: BinarySink | None = None,
        limit: int = DEFAULT_LIMIT,
        linger_s: float | None = DEFAULT_LINGER_S,
    ) -> None:
        self._stream: BinarySink = stream if stream is not None else sys.stdout.buffer
        self._limit = max(1, limit)
        self._linger_s = linger_s
        self._buf = bytearray()
        self._lock = threading.Lock()
        self._partial = threading.Condition(self._lock)
        self._flusher: threading.Thread | None = None
        self._stamp = 0  # bumped by every write: the flusher waits for it to stay put
        self._closed = False
        self.error: Exception | None = None  # the first write error; output is dropped after
        # linger_s None: partial lines wait for flush() (for callers that flush themselves)

    def __call__(self, data: bytes) -> None:
        with self._lock:
            was_empty = not self._buf
            self._buf += data
            self._stamp += 1
            if self._closed or len(self._buf) >= self._limit:
                self._emit(len(self._buf))
            elif b"\n" in data:
                self._emit(self._buf.rindex(b"\n") + 1)
            if was_empty and self._buf and not self._closed and self._linger_s is not None:
                if self._flusher is None:
                    self._flusher = threading.Thread(
                        target=self._flush_partial, name="console", daemon=True
                    )
                    self._flusher.start()
                self._partial.notify()  # only on empty -> partial: not a wake-up per byte

    def _flush_partial(self) -> None:
        with self._lock:
            while not self._closed:
                if not self._buf:
                    self._partial.wait()
                    continue
                stamp = self._stamp
                self._partial.wait(self._linger_s)  # set: see __call__
                if stamp == self._stamp:  # quiet for linger_s: show the partial line
                    self._emit(len(self._buf))

    def write(self, data: bytes) -> None:
        self(data)

    def flush(self) -> None:
        """Write out whatever is waiting, even a partial line."""
        with self._lock:
            self._emit(len(self._buf))

    def close(self) -> None:
        """Flush; later output is written through unbuffered. The stream stays open."""
        with self._lock:
            self._emit(len(self._buf))
            self._closed = True
            self._partial.notify()

    def __enter__(self) -> BufferedConsole:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _emit(self, count: int) -> None:
        if not count:
            return
        chunk = bytes(self._buf[:count])
        del self._buf[:count]
        if self.error is not None:
            return
        try:
            self._stream.write(chunk)
            self._stream.flush()
        except (OSError, ValueError) as exc:  # a closed pipe or stream: nobody is reading
            self.error = exc


def _stdin_fd() -> int:
    try:
        return sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):  # None, closed, or replaced (pytest)
        return -1


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except (OSError, ValueError):
        return False
    return True


def raw_attributes(attrs: list[Any]) -> list[Any]:
    """`attrs` (from tcgetattr) changed for a guest console: byte at a time, no echo, ISIG."""
    raw = [*attrs[:6], list(attrs[6])]
    raw[0] &= ~(
        termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
        | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON
    )  # fmt: skip
    raw[3] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.IEXTEN)
    raw[3] |= termios.ISIG
    raw[6][termios.VMIN] = 1
    raw[6][termios.VTIME] = 0
    return raw


class HostInput:
    """Feeds `callback` with what arrives on `fd` (default: the host's stdin)."""

    def __init__(
        self,
        callback: Callable[[bytes], None],
        fd: int | None = None,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        """`on_end()` runs on the reader thread once no more input can come."""
        self._callback = callback
        self._on_end = on_end
        self._fd = _stdin_fd() if fd is None else fd
        self._lock = threading.Lock()
        self._saved: list[Any] | None = None
        self._thread: threading.Thread | None = None
        self._wake: tuple[int, int] | None = None
        self._done = threading.Event()
        self._closed = False
        self.error: BaseException | None = None  # why reading stopped, if not end of file

    @property
    def is_terminal(self) -> bool:
        return self._fd >= 0 and os.isatty(self._fd)

    @property
    def raw(self) -> bool:
        """True while the terminal's settings are changed (and not yet restored)."""
        return self._saved is not None

    def start(self) -> HostInput:
        with self._lock:
            if self._thread is not None or self._closed:
                return self
            if not _is_open(self._fd):  # before os.pipe(), which would take its number
                self._done.set()
                return self
            if self.is_terminal:
                self._enter_raw()
            self._wake = os.pipe()
            self._thread = threading.Thread(
                target=self._run, args=(self._wake[0],), name="pvkit-host-input", daemon=True
            )
            self._thread.start()
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until reading has stopped (end of file, an error, or close())."""
        return self._done.wait(timeout)

    def close(self) -> None:
        """Stop reading and give the terminal its settings back; safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread, wake = self._thread, self._wake
        if wake is not None:
            with contextlib.suppress(OSError):
                os.write(wake[1], b"\0")
        if thread is not None:
            thread.join(_JOIN_TIMEOUT_S)
        if wake is not None and (thread is None or not thread.is_alive()):
            os.close(wake[0])
            os.close(wake[1])
        self.restore()
        self._done.set()

    def restore(self) -> None:
        """Put the terminal's original settings back (close() and atexit call this)."""
        with self._lock:
            saved, self._saved = self._saved, None
        if saved is None:
            return
        atexit.unregister(self.restore)
        with contextlib.suppress(termios.error, OSError):  # a vanished terminal: nothing to do
            termios.tcsetattr(self._fd, termios.TCSADRAIN, saved)

    def __enter__(self) -> HostInput:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _enter_raw(self) -> None:
        try:
            saved = termios.tcgetattr(self._fd)
            termios.tcsetattr(self._fd, termios.TCSANOW, raw_attributes(saved))
        except termios.error:
            return  # not a terminal after all: read it as it is
        self._saved = saved
        atexit.register(self.restore)

    def _run(self, wake: int) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(wake, select.POLLIN)
        try:
            while True:
                events = dict(poller.poll())
                if wake in events:
                    return
                data = os.read(self._fd, READ_CHUNK)  # readable or hung up: cannot block
                if not data:
                    return
                self._callback(data)
        except Exception as exc:  # EBADF, EIO from a vanished terminal, a failing callback
            self.error = exc
        finally:
            self._done.set()
            if self._on_end is not None:
                self._on_end()
