"""Configuration values shared by the commands: label budgets and their parsing.

Each command keeps its own frozen dataclass of resolved options next to the code that runs it;
this module holds the pieces several commands parse the same way.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any
from dataclasses import dataclass

from clipdebias.utils.errors import UserError

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


def check_training_ranges(config: Any) -> None:
    """Raise :class:`UserError` for the first training option of ``config`` (an ``ssl`` or
    ``zeroshot`` config: the fields both share) that is out of range, after
    :func:`check_finite` and :func:`check_seed`."""
    c = config
    check_finite(c)
    check_seed(c.seed)
    checks = [
        (c.tau >= 0, "--tau must be >= 0"),
        (0.0 <= c.threshold <= 1.0, "--threshold must be in [0, 1]"),
        (0.0 <= c.clip_fallback <= 1.0, "--clip-fallback must be in [0, 1]"),
        (0.0 <= c.prior_momentum < 1.0, "--prior-momentum must be in [0, 1)"),
        (0.0 <= c.ema_momentum < 1.0, "--ema-momentum must be in [0, 1)"),
        (c.lambda_u >= 0, "--lambda-u must be >= 0"),
        (c.mu >= 1, "--mu must be >= 1"),
        (c.batch_size >= 1, "--batch-size must be >= 1"),
        (c.epochs >= 1, "--epochs must be >= 1"),
        (c.steps_per_epoch is None or c.steps_per_epoch >= 1, "--steps-per-epoch must be >= 1"),
        (c.lr > 0, "--lr must be > 0"),
        (c.weight_decay >= 0, "--weight-decay must be >= 0"),
        (
            0 <= c.warmup_epochs <= c.epochs,
            f"--warmup-epochs must be in [0, --epochs]; it is {c.warmup_epochs} (given, or the default for this "
            f"dataset/student) and --epochs is {c.epochs}: pass a smaller --warmup-epochs",
        ),
        (c.eval_batch_size >= 1, "--eval-batch-size must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
