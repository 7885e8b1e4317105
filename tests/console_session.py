"""`pvkit run` in a subprocess, driven as a person at its serial console would drive it.

The guest's console is pvkit's stdout (merged with stderr, where pvkit's own lines go)
and its input is pvkit's stdin. `expect` waits for a pattern in what arrived since the
last match (prompts end without a newline, so this reads bytes, not lines); `send` types.
Every failure names the pattern and shows the end of the console.
"""

from __future__ import annotations

import codecs
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pvkit.bench.linux import FetchError, fetch


def fetched(script: str, limit: float) -> Path:
    """The path scripts/`script` fetched (and cached); the test fails with its reason."""
    try:
        return fetch(script, limit)
    except FetchError as exc:
        pytest.fail(str(exc))


class ConsoleSession:
    def __init__(self, args: list[str], cwd: Path | None = None):
        self.started = time.monotonic()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "pvkit", "run", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cwd,
        )
        self._text = ""
        self._pos = 0
        self._closed = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        # Incremental: a character split between two reads still decodes as itself.
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        fd = self._proc.stdout.fileno()
        while chunk := os.read(fd, 65536):
            with self._changed:
                self._text += decoder.decode(chunk).replace("\r", "")
                self._changed.notify_all()
        with self._changed:
            self._text += decoder.decode(b"", final=True)
            self._closed = True
            self._changed.notify_all()

    @property
    def text(self) -> str:
        with self._changed:
            return self._text

    @property
    def position(self) -> int:
        """Where the next `expect` starts looking."""
        with self._changed:
            return self._pos

    def since(self, start: int) -> str:
        """The console from `start` (a `position`) to the end of the last match."""
        with self._changed:
            return self._text[start : self._pos]

    def tail(self, lines: int = 25) -> str:
        with self._changed:
            return self._tail(lines)

    def _tail(self, lines: int = 25) -> str:
        return "\n".join(self._text.splitlines()[-lines:])

    def expect(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first match of `pattern` after the previous match; fails at the deadline
        or when pvkit exits first."""
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                m = regex.search(self._text, self._pos)
                if m is not None:
                    self._pos = m.end()
                    return m
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    why = "pvkit exited" if self._closed else f"{timeout:.0f} s passed"
                    pytest.fail(f"{why} before {pattern!r} appeared ({self.seconds():.1f} s "
                                f"into the run); the console ended:\n{self._tail()}")  # fmt: skip
                self._changed.wait(min(left, 1.0))

    def send(self, line: str) -> None:
        """Type `line` and Enter."""
        assert self._proc.stdin is not None
        self._proc.stdin.write(line.encode() + b"\n")
        self._proc.stdin.flush()

    def wait(self, timeout: float) -> int:
        """pvkit's exit status (killing it at the deadline fails the test)."""
        try:
            code = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"pvkit did not exit within {timeout:.0f} s; the console ended:\n"
                        f"{self.tail()}")  # fmt: skip
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        self._reader.join(5)

    def seconds(self) -> float:
        return time.monotonic() - self.started
