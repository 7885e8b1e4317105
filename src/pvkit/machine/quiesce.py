"""Stop-the-world for code patching: pause every other vCPU, change guest code, resume.

A vCPU is "in guest" while its engine may execute instructions. `pause_others` waits
until no other vCPU is, kicking the ones that are; entries wait while a pause is held.
Each resume bumps `generation`, and an engine seeing a new generation drops its
translated code before it runs again, so no vCPU executes a stale translation.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_REKICK_S = 0.001  # a stop sent just before an engine starts is lost; send it again


class ExecutionGate:
    def __init__(self, vcpu_count: int, kick: Callable[[int], None]):
        self._cond = threading.Condition()
        self._in_guest = [False] * vcpu_count
        self._owner: int | None = None
        self._kick = kick
        self.generation = 0

    def enter(self, vcpu: int) -> int:
        """Called before the engine runs guest code; returns the code generation."""
        with self._cond:
            while self._owner is not None and self._owner != vcpu:
                self._cond.wait()
            self._in_guest[vcpu] = True
            return self.generation

    def leave(self, vcpu: int) -> None:
        with self._cond:
            self._in_guest[vcpu] = False
            self._cond.notify_all()

    @contextmanager
    def others_paused(self, vcpu: int) -> Iterator[None]:
        """Hold every other vCPU outside guest code; `vcpu` may be inside a trap hook."""
        with self._cond:
            self._in_guest[vcpu] = False  # waiting here is not running guest code
            self._cond.notify_all()
            while self._owner is not None:
                self._cond.wait()
            self._owner = vcpu
            while True:
                busy = [i for i, inside in enumerate(self._in_guest) if inside and i != vcpu]
                if not busy:
                    break
                for i in busy:
                    self._kick(i)
                self._cond.wait(_REKICK_S)
        try:
            yield
        finally:
            with self._cond:
                self.generation += 1
                self._owner = None
                self._in_guest[vcpu] = True
                self._cond.notify_all()
