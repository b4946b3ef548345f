"""Numbers and tables as text, for report files and terminal tables alike."""

from __future__ import annotations

import math
from collections.abc import Sequence

MISSING = "–"
"""What an undefined or unrecorded value prints as."""


def is_finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def count_of(count: int, noun: str) -> str:
    """``1 image``, ``3 images``: a count with its noun (plural with an ``s``)."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def fmt(value: float | None, digits: int = 1, suffix: str = "") -> str:
    """A number with ``digits`` decimals and a suffix, or ``–`` when undefined."""
    return f"{value:.{digits}f}{suffix}" if is_finite(value) else MISSING


def fmt_change(before: float | None, after: float | None, digits: int = 1, suffix: str = "") -> str:
    """``before → after``."""
    return f"{fmt(before, digits, suffix)} → {fmt(after, digits, suffix)}"


def fmt_mean_std(mean: float | None, std: float | None, digits: int = 1) -> str:
    """``mean ± std``, just ``mean`` when the spread is undefined (a single value)."""
    if not is_finite(mean):
        return MISSING
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if is_finite(std) else f"{mean:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table; ``|`` in cells is escaped."""

    def cell(text: object) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
