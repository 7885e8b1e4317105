"""Policy rules written as text, as `pvkit run --deny` and `--forward` take them.

`FID` or `FID-FID` (inclusive; any base Python's int() reads with base 0, so 0x... for
hex): one function ID or a range of them. Every mistake is a `RuleSpecError` of one
sentence naming the text.
"""

from __future__ import annotations

from pvkit.hypercall.namespace import IdRange


class RuleSpecError(ValueError):
    """A rule's text cannot be read; the message says why."""


def _number(text: str, whole: str, limit: int) -> int:
    try:
        value = int(text.strip(), 0)
    except ValueError:
        raise RuleSpecError(
            f"{whole!r}: {text.strip()!r} is not a number (use 0x... for hex)"
        ) from None
    if not 0 <= value <= limit:
        raise RuleSpecError(f"{whole!r}: {value:#x} is not a function ID (0..{limit:#x})")
    return value


def parse_id_range(text: str, limit: int) -> IdRange:
    """`FID` or `FID-FID` as an inclusive range of IDs in 0..`limit`."""
    first, sep, last = text.partition("-")
    if not first.strip() or (sep and not last.strip()):
        raise RuleSpecError(f"{text!r} is not FID or FID-FID")
    low = _number(first, text, limit)
    high = _number(last, text, limit) if sep else low
    if high < low:
        raise RuleSpecError(f"{text!r}: the range ends at {high:#x}, before it starts")
    return IdRange(low, high)


def split_forward(text: str) -> tuple[str, str]:
    """`FID[-FID]=module:function` as (the IDs' text, the handler's name)."""
    ids, sep, handler = text.partition("=")
    if not sep or not ids.strip() or not handler.strip():
        raise RuleSpecError(f"{text!r} is not FID[-FID]=package.module:function")
    return ids.strip(), handler.strip()
