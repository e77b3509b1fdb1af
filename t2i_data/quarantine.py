"""Quarantine: the one word for an input that is set aside with its reason instead of written.

A producer raises ``Quarantine(kind, detail)`` for one bad input; the shard writer turns it into a
``Quarantined`` record, and the manifest lists every record under ``quarantined`` (``totals.quarantined``
counts them). ``kind`` is a short stable code (``decode-failed``, ``too-large``, ``duplicate-image``,
...; DESIGN.md, "Errors") that counts group by. This module imports nothing of the project, so every
stage (decode, shard writing, cards, inspect) can use it without an import cycle.
"""
from __future__ import annotations

from dataclasses import dataclass


class Quarantine(ValueError):
    """Raised for one bad input; ``kind`` is a short stable code that counts group by, and the
    message is ``"<kind>: <detail>"``."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


@dataclass(frozen=True)
class Quarantined:
    """An input quarantined instead of written, yielded by a producer: its key and why
    (``"<kind>: <detail>"``). The manifest stores it as ``{"key": ..., "reason": ...}``."""

    key: str
    reason: str


def quarantine_counts(quarantined: list[dict]) -> dict[str, int]:
    """Quarantined records (manifest ``quarantined``) -> count per kind, sorted by kind."""
    counts: dict[str, int] = {}
    for r in quarantined:
        kind = r["reason"].split(":", 1)[0]
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))
