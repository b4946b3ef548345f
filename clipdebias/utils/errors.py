"""Errors a user can cause. The CLI prints them as one line and exits with code 2.

Library code says what is wrong in plain words; only the CLI knows the flags:

- :class:`OptionError` (a ``ValueError``): a value of one option, named by its config field
  (``prior_momentum``); the CLI prints ``error: --prior-momentum must be in [0, 1)``.
- :class:`UserError`: anything else a user can fix (a missing file, unknown weights, bad data).
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: wrong path, unknown name, malformed option value, missing weights.

    The message must be one line that says what is wrong and how to fix it.
    """


class OptionError(ValueError):
    """The value of option ``option`` (a config field name, e.g. ``prior_momentum``) cannot be used;
    ``problem`` says why, in words that follow the option's name: ``"must be in [0, 1)"``."""

    def __init__(self, option: str, problem: str):
        super().__init__(f"{option} {problem}")
        self.option = option
        self.problem = problem


def flag_name(option: str) -> str:
    """The command-line flag of a config field: ``prior_momentum`` -> ``--prior-momentum``."""
    return "--" + option.replace("_", "-")


EXIT_USER_ERROR = 2
