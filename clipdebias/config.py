"""Configuration values shared by the commands: label budgets and their parsing.

Each command keeps its own frozen dataclass of resolved options next to the code that runs it;
this module holds the pieces several commands parse the same way.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

from clipdebias.errors import UserError

_PCT = re.compile(r"^(?P<value>\d+(?:\.\d+)?|\.\d+)pct$")
_PER_CLASS = re.compile(r"^(?P<value>\d+)-per-class$")


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

    Raises :class:`UserError` with a one-line message for anything else.
    """
    cleaned = text.strip().lower()
    hint = "use a percentage such as 0.2pct, 1pct or 10pct, or a count such as 4-per-class"
    if match := _PCT.match(cleaned):
        percent = float(match["value"])
        if not 0.0 < percent <= 100.0:
            raise UserError(f"--labels {text!r}: the percentage must be in (0, 100]; {hint}")
        return LabelBudget(kind="fraction", value=percent / 100.0, text=cleaned)
    if match := _PER_CLASS.match(cleaned):
        count = int(match["value"])
        if count < 1:
            raise UserError(f"--labels {text!r}: the count per class must be at least 1; {hint}")
        return LabelBudget(kind="per_class", value=float(count), text=cleaned)
    raise UserError(f"--labels {text!r} is not a label budget; {hint}")


SEED_LIMIT = 2**63
"""Seeds are in ``[0, SEED_LIMIT)``: what numpy's and torch's generators both accept."""


def option_name(field: str) -> str:
    """The command-line flag of a config field: ``prior_momentum`` -> ``--prior-momentum``."""
    return "--" + field.replace("_", "-")


def check_finite(config: object) -> None:
    """Raise :class:`UserError` naming the first float field of a config dataclass that is NaN or
    infinite (the command line reads ``nan`` and ``inf`` as numbers; no option means them)."""
    for field in dataclasses.fields(config):  # type: ignore[arg-type]
        value = getattr(config, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{option_name(field.name)} must be a finite number, got {value}")


def check_seed(seed: int) -> None:
    if not 0 <= seed < SEED_LIMIT:
        raise UserError(f"--seed must be in [0, 2**63), got {seed}")
