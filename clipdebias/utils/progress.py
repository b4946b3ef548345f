"""How long-running library functions report progress without printing: a :class:`Progress` sink.

The CLI passes a rich implementation (progress bars, warnings on the console); library callers
pass nothing and get :class:`NoProgress`.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def start(self, label: str, total: int, completed: int = 0) -> None:
        """A new stage of ``total`` items begins, ``completed`` of them already done (resumed)."""

    def advance(self, count: int) -> None:
        """``count`` more items of the current stage are done."""

    def note(self, text: str, warning: bool = False) -> None:
        """Something the user should know now (e.g. that the weights are random)."""


class NoProgress:
    """A :class:`Progress` that reports nothing."""

    def start(self, label: str, total: int, completed: int = 0) -> None:
        pass

    def advance(self, count: int) -> None:
        pass

    def note(self, text: str, warning: bool = False) -> None:
        pass
