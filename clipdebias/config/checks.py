"""Range checks of the options several commands share.

A value out of range raises :class:`~clipdebias.utils.errors.OptionError` naming the config field;
the CLI turns it into ``error: --flag ...``. A name that is not one of the choices raises
:class:`~clipdebias.utils.errors.UserError` (``unknown --flag 'value'; choose one of: ...``). Each
command keeps its own frozen dataclass of resolved options next to the code that runs it and calls
these once, when it resolves that config.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Any

from clipdebias.utils.errors import OptionError, UserError, flag_name

Check = tuple[bool, str, str]
"""``(ok, field, problem)``: when ``ok`` is false, ``OptionError(field, problem)``."""


def check_all(checks: Iterable[Check]) -> None:
    """Raise :class:`OptionError` for the first check of ``checks`` that failed."""
    for ok, option, problem in checks:
        if not ok:
            raise OptionError(option, problem)


def check_choice(field: str, value: Any, choices: Sequence[str]) -> None:
    """Raise :class:`UserError` when ``value`` (of the option ``field``) is not one of ``choices``."""
    if value not in choices:
        raise UserError(f"unknown {flag_name(field)} {value!r}; choose one of: {', '.join(choices)}")


def _process_checks(config: Any) -> list[Check]:
    """``workers`` (decoding / DataLoader processes) and ``threads`` (torch's CPU threads), which
    every command that reads images has."""
    return [
        (config.workers is None or config.workers >= 0, "workers", "must be >= 0"),
        (config.threads is None or config.threads >= 1, "threads", "must be >= 1"),
    ]


def check_encoding(config: Any) -> None:
    """The options of encoding a split through CLIP that ``encode`` and ``pseudolabel`` share:
    ``encode_batch_size``, ``chunk_size``, ``workers``, ``threads``."""
    check_all(
        [
            (config.encode_batch_size >= 1, "encode_batch_size", "must be >= 1"),
            (config.chunk_size >= 1, "chunk_size", "must be >= 1"),
            *_process_checks(config),
        ]
    )


SEED_LIMIT = 2**63
"""Seeds are in ``[0, SEED_LIMIT)``: what numpy's and torch's generators both accept."""


def check_finite(config: object) -> None:
    """Raise :class:`OptionError` for the first float field of a config dataclass that is NaN or
    infinite (the command line reads ``nan`` and ``inf`` as numbers; no option means them)."""
    for field in dataclasses.fields(config):  # type: ignore[arg-type]
        value = getattr(config, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise OptionError(field.name, f"must be a finite number, got {value}")


def check_seed(seed: int) -> None:
    if not 0 <= seed < SEED_LIMIT:
        raise OptionError("seed", f"must be in [0, 2**63), got {seed}")


def check_training_ranges(config: Any) -> None:
    """Raise :class:`OptionError` for the first training option of ``config`` (an ``ssl`` or
    ``zeroshot`` config: the fields both share) that is out of range, after
    :func:`check_finite` and :func:`check_seed`."""
    c = config
    check_finite(c)
    check_seed(c.seed)
    checks = [
        (c.tau >= 0, "tau", "must be >= 0"),
        (0.0 <= c.threshold <= 1.0, "threshold", "must be in [0, 1]"),
        (0.0 <= c.clip_fallback <= 1.0, "clip_fallback", "must be in [0, 1]"),
        (0.0 <= c.prior_momentum < 1.0, "prior_momentum", "must be in [0, 1)"),
        (0.0 <= c.ema_momentum < 1.0, "ema_momentum", "must be in [0, 1)"),
        (c.lambda_u >= 0, "lambda_u", "must be >= 0"),
        (c.mu >= 1, "mu", "must be >= 1"),
        (c.batch_size >= 1, "batch_size", "must be >= 1"),
        (c.epochs >= 1, "epochs", "must be >= 1"),
        (c.steps_per_epoch is None or c.steps_per_epoch >= 1, "steps_per_epoch", "must be >= 1"),
        (c.lr > 0, "lr", "must be > 0"),
        (c.weight_decay >= 0, "weight_decay", "must be >= 0"),
        (
            0 <= c.warmup_epochs <= c.epochs,
            "warmup_epochs",
            f"must be in [0, --epochs]; it is {c.warmup_epochs} (given, or the default for this "
            f"dataset/student) and --epochs is {c.epochs}: pass a smaller --warmup-epochs",
        ),
        (c.eval_batch_size >= 1, "eval_batch_size", "must be >= 1"),
        *_process_checks(c),
    ]
    check_all(checks)
