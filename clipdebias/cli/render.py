"""Rich rendering shared by commands: key/value summary tables and the list of files written."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from clipdebias.training.run_layout import SKIPPED_IMAGES


def key_value_table(title: str, rows: Iterable[tuple[str, str]]) -> Table:
    """A two-column table of ``(name, value)`` rows."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("item", style="bold")
    table.add_column("value")
    for name, value in rows:
        table.add_row(name, value)
    return table


def column_table(title: str, header: Sequence[str], rows: Iterable[Sequence[str]]) -> Table:
    """A table with a header row; the first column is bold. On a narrow terminal the widest
    column (the long group names) wraps first, so that numbers and headers stay whole."""
    table = Table(title=title, title_justify="left")
    for index, name in enumerate(header):
        table.add_column(name, style="bold" if index == 0 else None, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def print_written(console: Console, files: Sequence[Path], notes: Sequence[str] = ()) -> None:
    """The notes (yellow) and the paths of the files a command wrote."""
    for note in notes:
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False, soft_wrap=True)
    console.print(f"wrote {len(files)} file(s):")
    for path in files:
        console.print(f"  {path}", highlight=False, soft_wrap=True)


def print_report_outcome(console: Console, source: Path | str, report: Any, error: str | None) -> None:
    """Where the automatic report of ``source`` went, or a warning saying how to retry it."""
    if report is not None:
        console.print(escape(f"report: {report.markdown}"), soft_wrap=True)
    elif error is not None:
        console.print(
            f"[yellow]warning:[/yellow] the report could not be written ({escape(error)}); "
            f"run `clipdebias report {escape(str(source))}` to retry",
            soft_wrap=True,
        )


def percent(value: float | None) -> str:
    """A percentage for a summary table; ``-`` where there is none."""
    return "-" if value is None else f"{value:.2f}%"


def imbalance_text(value: float) -> str:
    """A summary-table imbalance ratio; ``-`` for the 0.0 of a run without confident pseudo-labels."""
    return f"{value:.2f}" if value > 0 else "-"


def skipped_text(count: int) -> str:
    """The summary-table value for the unreadable images a run skipped."""
    return f"{count:,} (listed in {SKIPPED_IMAGES})" if count else "0"


def speed_text(metrics: dict[str, Any]) -> str:
    """The summary-table value for a training run's images/s (and its processes under torchrun)."""
    rate = metrics.get("images_per_s")
    processes = metrics.get("world_size", 1)
    text = "-" if rate is None else f"{rate:,.0f} img/s"
    return text + (f" ({processes} processes)" if processes > 1 else "")
