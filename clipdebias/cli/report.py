"""``clipdebias report``: charts and report.md for a run folder or a pseudo-label CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from rich.console import Console
from typer import Argument, Option

from clipdebias.cli import options
from clipdebias.cli.render import key_value_table, print_written


def report_command(
    path: Annotated[
        Path,
        Argument(
            metavar="RUN_OR_CSV",
            help="A run folder (the --out of ssl or zeroshot) or a pseudo-label CSV.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path | None,
        Option(
            "--out",
            "-o",
            help="Folder for report.md and the PNGs." + options.default("RUN/report/, or FILE_report/ beside FILE.csv"),
        ),
    ] = None,
) -> None:
    # the implementation loads numpy and matplotlib: imported here, so that --help stays fast
    from clipdebias.reporting.report import write_report

    console = Console()
    with console.status("drawing the report charts…"):
        result = write_report(path, out)
    console.print(key_value_table(f"clipdebias report: {result.source} ({result.kind})", result.summary))
    print_written(console, result.files, result.notes)
