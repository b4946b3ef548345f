"""Typed access to loosely typed JSON values: what clipdebias wrote, read back defensively.

A value of the wrong type (or ``null``, or not finite) reads as ``None``, never an exception; only a
file that is not a JSON object at all is a :class:`~clipdebias.utils.errors.UserError`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from clipdebias.utils.errors import UserError


def as_number(value: Any) -> float | None:
    """A finite float from an int/float JSON value; ``None`` for anything else (bool, str, null, nan)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def as_vector(value: Any, length: int | None = None) -> np.ndarray | None:
    """A float64 vector from a JSON list of numbers (of ``length`` if given); ``None`` otherwise."""
    if not isinstance(value, list) or not value:
        return None
    numbers = [as_number(item) for item in value]
    if any(number is None for number in numbers):
        return None
    if length is not None and len(numbers) != length:
        return None
    return np.asarray(numbers, dtype=np.float64)


def as_text(value: Any) -> str | None:
    """A string from a JSON string or number; ``None`` for null, lists and objects."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; :class:`UserError` for an unreadable file, invalid JSON or
    anything but an object."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {path}: {err}") from err
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err.msg}, line {err.lineno})") from err
    if not isinstance(obj, dict):
        raise UserError(f"{path} must hold a JSON object, found {type(obj).__name__}")
    return obj
