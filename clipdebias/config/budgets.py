"""Label budgets: how many labeled images per class ``--labels`` asks for (``0.2pct``, ``4-per-class``)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from clipdebias.utils.errors import OptionError

_PCT = re.compile(r"^(?P<value>\d+(?:\.\d+)?|\.\d+)pct$")
_PER_CLASS = re.compile(r"^(?P<value>\d+)-per-class$")
_HINT = "use a percentage such as 0.2pct, 1pct or 10pct, or a count such as 4-per-class"


@dataclass(frozen=True)
class LabelBudget:
    """How many labeled images to take per class.

    ``kind == "fraction"``: ``value`` is a fraction in (0, 1] of each class's images (at least one).
    ``kind == "per_class"``: ``value`` is an exact count per class (>= 1).
    """

    kind: str
    value: float
    text: str

    def count_for(self, class_size: int) -> int:
        """Number of labeled images for a class with ``class_size`` images (before any cap)."""
        if self.kind == "per_class":
            return int(self.value)
        return max(1, math.floor(self.value * class_size + 0.5))


def parse_label_budget(text: str) -> LabelBudget:
    """Parse ``0.2pct``, ``1pct``, ``10pct`` (percent of each class) or ``4-per-class``.

    Raises :class:`OptionError` (option ``labels``) for anything else.
    """
    cleaned = text.strip().lower()
    if match := _PCT.match(cleaned):
        percent = float(match["value"])
        if not 0.0 < percent <= 100.0:
            raise OptionError("labels", f"{text!r}: the percentage must be in (0, 100]; {_HINT}")
        return LabelBudget(kind="fraction", value=percent / 100.0, text=cleaned)
    if match := _PER_CLASS.match(cleaned):
        count = int(match["value"])
        if count < 1:
            raise OptionError("labels", f"{text!r}: the count per class must be at least 1; {_HINT}")
        return LabelBudget(kind="per_class", value=float(count), text=cleaned)
    raise OptionError("labels", f"{text!r} is not a label budget; {_HINT}")
