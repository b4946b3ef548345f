"""The ``clipdebias`` command line: a Typer app whose commands live one per module in this package.

Each command turns its options into a config and makes one call into the library. Errors a user
can cause (:class:`clipdebias.utils.errors.UserError`, bad option values) end with one line on stderr and
exit code 2; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Annotated

import typer
from typer import Option
from typer.core import TyperGroup

try:  # Typer >= 0.22 ships its own copy of click; older releases use the click package.
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - depends on the installed Typer
    from click import exceptions as click_exceptions

from clipdebias import __version__
from clipdebias.cli.compare import compare_command
from clipdebias.cli.encode import encode_command
from clipdebias.cli.info import info_command
from clipdebias.cli.options import speaks_for_the_node
from clipdebias.cli.pseudolabel import pseudolabel_command
from clipdebias.cli.report import report_command
from clipdebias.cli.ssl import ssl_command
from clipdebias.cli.zeroshot import zeroshot_command
from clipdebias.utils.errors import EXIT_USER_ERROR, OptionError, UserError, flag_name

EXIT_INTERRUPTED = 130
"""Exit code after Ctrl-C (128 + SIGINT), as shells report it."""
RESUME_HINTS = {
    "ssl": "run the same command with --resume to continue from the last finished epoch",
    "zeroshot": "run the same command with --resume to continue from the last finished epoch",
    "encode": "run the same command again to continue: finished chunks are kept",
    "pseudolabel": "run the same command again: encoded chunks are kept",
}
"""What to do after Ctrl-C, per command (the others simply start over)."""


class Interrupted(Exception):
    """Ctrl-C during a command, carried past Typer (which turns ``KeyboardInterrupt`` into a silent
    exit code) to :func:`main`, which says so."""

    def __init__(self, command: str | None):
        super().__init__(command)
        self.command = command


class _Commands(TyperGroup):
    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as err:
            raise Interrupted(ctx.invoked_subcommand) from err


def _interrupted(command: str | None) -> int:
    hint = RESUME_HINTS.get(command or "")
    sys.stderr.write("interrupted" + (f"; {hint}" if hint else "") + "\n")
    sys.stderr.flush()
    return EXIT_INTERRUPTED


app = typer.Typer(
    name="clipdebias",
    cls=_Commands,
    help="Adapt CLIP to unlabeled data with debiased pseudo-labels (DebiasPL, CVPR 2022).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: rich's option panels squeeze the descriptions into ~17 columns of an 80-column
    # terminal (words cut with "…") and read "[default: ...]" in a description as markup.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"clipdebias {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[bool, Option("--debug", help="Show the full traceback when a command fails.")] = False,
) -> None:
    """Adapt CLIP to unlabeled data with debiased pseudo-labels (DebiasPL, CVPR 2022)."""


app.command("info", help="Show versions, GPUs and the cache directory.")(info_command)
app.command("ssl", help="Semi-supervised FixMatch + DebiasPL, few labels per class.")(ssl_command)
app.command("encode", help="Encode a split once into the embedding cache (resumable).")(encode_command)
app.command("pseudolabel", help="Debiased zero-shot pseudo-labels of a split, as CSV.")(pseudolabel_command)
app.command("zeroshot", help="Unlabeled images -> debiased CLIP pseudo-labels -> a student.")(zeroshot_command)
app.command("report", help="Charts and report.md for a run folder or a pseudo-label CSV.")(report_command)
app.command("compare", help="Put finished runs side by side: mean ± std, paired gains.")(compare_command)


def _one_line(message: str) -> str:
    """A user error is one line: the first non-empty line of ``message`` (the rest is detail that
    a wrapped library error may carry; ``--debug`` shows it with the traceback)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[0] if lines else "failed (run with --debug for the traceback)"


def _fail(message: str, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    if debug or speaks_for_the_node():
        sys.stderr.write(f"error: {_one_line(message)}\n")  # one write: lines of processes never interleave
        sys.stderr.flush()
    return EXIT_USER_ERROR


def _click_abort() -> tuple[type[BaseException], ...]:
    abort = getattr(click_exceptions, "Abort", None)  # typer._click has no Abort; click has
    return (abort,) if abort is not None else ()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (``python -m clipdebias`` and the console script)."""
    args = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in args
    # OpenMP threads that spin while waiting make torch several times slower whenever another
    # process shares the cores (measured: 6-9x on 2 busy cores); passive waiting costs little
    # otherwise. Only effective before torch is imported, which the commands do lazily.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        result = app(args=args, prog_name="clipdebias", standalone_mode=False)
    except UserError as err:
        return _fail(str(err), debug)
    except OptionError as err:  # a library's plain words, given the flag's name here
        return _fail(f"{flag_name(err.option)} {err.problem}", debug)
    except click_exceptions.NoArgsIsHelpError as err:
        print(err.ctx.get_help() if err.ctx else str(err))
        return 0
    except click_exceptions.UsageError as err:
        command = err.ctx.command_path if err.ctx else "clipdebias"
        return _fail(f"{err.format_message()} (see '{command} --help')", debug)
    except click_exceptions.ClickException as err:
        return _fail(err.format_message(), debug)
    except (typer.Abort, *_click_abort()) as err:
        if isinstance(err.__cause__, EOFError):
            # Typer turns any EOFError into Abort (meant for prompts, which clipdebias has none of):
            # one raised by a command is a failure to show as such, not an abort.
            raise err.__cause__ from None
        print("aborted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Interrupted as err:
        return _interrupted(err.command)
    except KeyboardInterrupt:  # outside a command (while parsing the options)
        return _interrupted(None)
    return result if isinstance(result, int) else 0
