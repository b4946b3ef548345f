"""``clipdebias compare``: finished runs side by side, one table and one chart."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from rich.console import Console
from typer import Argument, Option

from clipdebias.cli import options
from clipdebias.cli.render import column_table, print_written
from clipdebias.config import defaults
from clipdebias.utils.formatting import count_of

GROUP_KEYS_HELP = ",".join(defaults.COMPARE_GROUP_KEYS)


def compare_command(
    runs: Annotated[
        list[Path],
        Argument(
            metavar="RUN",
            help="Finished run folders, or folders holding one run folder each (e.g. one per seed).",
            show_default=False,
        ),
    ],
    out: Annotated[Path, Option("--out", "-o", help="Folder for compare.md and compare.png.")] = Path(
        defaults.COMPARE_OUT
    ),
    by: Annotated[
        str | None,
        Option(
            "--by",
            help="Comma-separated keys of metrics.json/config.json that define a group."
            + options.default(GROUP_KEYS_HELP),
        ),
    ] = None,
    overwrite: Annotated[
        bool, Option("--overwrite", help="Replace the compare.md and compare.png that --out already holds.")
    ] = False,
) -> None:
    # the implementation loads numpy and matplotlib: imported here, so that --help stays fast
    from clipdebias.reporting.compare import DEFAULT_GROUP_KEYS, compare_runs, group_rows

    keys = tuple(by.split(",")) if by is not None else DEFAULT_GROUP_KEYS
    console = Console()
    with console.status(f"comparing {len(runs)} path(s)…"):
        result = compare_runs(runs, out, keys, known_keys_only=by is not None, overwrite=overwrite)
    header, rows = group_rows(result.groups)
    classes = f"{result.num_classes} classes" if result.num_classes is not None else "unknown class count"
    baseline = result.groups[0].name
    title = (
        f"clipdebias compare: {count_of(len(result.runs), 'run')}, {classes}; "
        f"Δ top-1 is paired by seed against {baseline}"
    )
    console.print(column_table(title, header, rows))
    print_written(console, result.files, result.notes)
