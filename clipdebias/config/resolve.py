"""What resolving the options of a training command (``ssl``, ``zeroshot``) does alike: defaults
filled in where the user gave nothing, paths expanded, and the ``config.json`` of the run folder."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from clipdebias import __version__


def fill_options(
    command: str,
    config_type: type,
    defaults: Iterable[Mapping[str, Any]],
    given: Mapping[str, Any],
    paths: Iterable[str],
) -> dict[str, Any]:
    """The options of ``config_type``: each of ``defaults`` in turn (later ones win), then every value
    of ``given`` that is not ``None``; the options named in ``paths`` with ``~`` expanded.

    Raises ``TypeError`` for a name that is no field of ``config_type`` (a caller's typo, not a user's).
    """
    values: dict[str, Any] = {}
    for table in defaults:
        values.update(table)
    values.update({k: v for k, v in given.items() if v is not None})
    for key in paths:
        if values.get(key) is not None:
            values[key] = str(Path(values[key]).expanduser())
    unknown = set(values) - {f.name for f in dataclasses.fields(config_type)}
    if unknown:
        raise TypeError(f"unknown {command} options: {sorted(unknown)}")
    return values


def run_config_json(command: str, config: Any, classes: list[str]) -> dict[str, Any]:
    """The ``config.json`` of a run folder: every resolved option, the method and the classes."""
    return {
        "command": command,
        "version": __version__,
        **dataclasses.asdict(config),
        "method": config.method,
        "classes": classes,
    }
