"""Trace events: a hub that costs one falsy check when nobody listens."""
