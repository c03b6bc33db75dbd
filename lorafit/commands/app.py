"""The Typer app every command registers on, and what every command shares: one-line errors with an
exit code (never a traceback), --quiet / --json, --version.

Exit codes (for CI): 0 ok, 1 unexpected error, 2 bad input (recipe, data, adapter, paths),
3 training diverged (non-finite loss), 130 interrupted (a checkpoint was written first).
"""

from __future__ import annotations

import functools
import os
import traceback
from typing import Annotated

import typer

from lorafit import __version__
from lorafit.errors import EXIT_INTERRUPTED, EXIT_OTHER, LorafitError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def cli_command(fn):
    """Run a command body: user errors become one line on stderr and their exit code, never a traceback.

    A worker of a multi-process run (torchrun sets RANK) shows an error once for the job: a user error
    (the same on every rank) on rank 0 only; an unexpected one on the rank it happened on, with its
    rank; the error a rank gets because another rank went away, not at all (LORAFIT_DEBUG shows all)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        rank = int(os.environ.get("RANK", "0"))
        debug = bool(os.environ.get("LORAFIT_DEBUG"))
        try:
            return fn(*args, **kwargs)
        except LorafitError as e:
            if rank == 0 or debug:
                typer.echo(f"error: {e}", err=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            if rank == 0:
                typer.echo("interrupted", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except typer.Exit:
            raise
        except Exception as e:  # noqa: BLE001 - last resort: one line, traceback only on request
            if debug:
                traceback.print_exc()
            if "RANK" in os.environ and not debug and _peer_failure(e):
                raise typer.Exit(EXIT_OTHER) from None
            message = str(e).splitlines()[0] if str(e) else ""
            where = f"rank {rank}: " if rank else ""
            typer.echo(f"error: {where}unexpected {type(e).__name__}: {message} (LORAFIT_DEBUG=1 shows the traceback)",
                       err=True)
            raise typer.Exit(EXIT_OTHER) from None

    return wrapper


def _peer_failure(error: Exception) -> bool:
    from lorafit.train.distributed import is_peer_failure

    return is_peer_failure(error)


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"lorafit {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Fine-tune language models with LoRA from YAML recipes.

    \b
    Examples:
      lorafit recipes                                  the shipped recipes, one line each
      lorafit train recipes/quickstart.yaml            a first run: a few minutes on a laptop CPU
      lorafit report runs/quickstart                   its settings, final numbers and loss curve
      lorafit COMMAND --help                           each command's options and examples
    """


QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON summary on stdout at the end (for scripts).")]


