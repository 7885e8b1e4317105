"""`--save-at MS --save FILE`, shared by `pvkit run` and `pvkit restore`."""

from __future__ import annotations

import math
from pathlib import Path

from pvkit.cli.options import fail
from pvkit.platform.board import ConfigError
from pvkit.snapshot.config import Board
from pvkit.snapshot.save_point import SavePoint


def arm_save_point(
    board: Board, image: Path | None, at_ms: float | None, path: Path | None
) -> SavePoint | None:
    """The save point the options ask for (installed), or None; bad options exit 2."""
    if at_ms is None and path is None:
        return None
    if at_ms is None or path is None:
        raise fail("--save-at and --save go together: give the time and the file")
    if not math.isfinite(at_ms) or at_ms < 0:
        raise fail(f"--save-at {at_ms:g}: give a time in ms, 0 or more")
    try:
        point = SavePoint(board, image, round(at_ms * 1_000_000), path)  # type: ignore[arg-type]
    except ConfigError as exc:
        raise fail(str(exc)) from None
    point.install()
    return point
