"""The error every snapshot reader raises, in a module of its own: the state code that each
device and service imports needs it, and a run that never saves should not load the file
format's hashing and JSON to get it."""

from __future__ import annotations


class SnapshotError(ValueError):
    """A snapshot that cannot be read or used; the message is one sentence."""
