"""A :class:`clipdebias.utils.progress.Progress` drawn with rich: one bar per stage, items per second."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

_UNITS = {"encoding images": "img", "encoding prompts": "prompt"}


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "row")
        return Text(f"{speed:,.0f} {unit}/s" if speed else f"- {unit}/s", style="progress.data.speed")


class RichProgress:
    """Use as a context manager around a library call that takes a ``progress`` argument.

    The bars appear with the first stage, so a command that fails early prints only its error.
    """

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self._bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _RateColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )
        self._task: int | None = None

    def __enter__(self) -> RichProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop drawing the bars (before another live display, e.g. a training bar, starts)."""
        if self._task is not None:
            self._bars.stop()

    def start(self, label: str, total: int, completed: int = 0) -> None:
        if self._task is None:
            self._bars.start()
        unit = _UNITS.get(label.split(":", 1)[0], "row")  # "encoding images: train" counts images too
        self._task = self._bars.add_task(label, total=total, completed=completed, unit=unit)

    def advance(self, count: int) -> None:
        if self._task is not None:
            self._bars.advance(self._task, count)

    def note(self, text: str, warning: bool = False) -> None:
        prefix = "[bold yellow]warning:[/] " if warning else ""
        self.console.print(prefix + escape(text))
