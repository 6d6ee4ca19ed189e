"""Shared CLI plumbing: --json output, home loading, and operator-safe error reporting."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bastion.errors import BastionError, InputError
from bastion.home import Home

console = Console()
err_console = Console(stderr=True)

JSON_OPTION = typer.Option(False, "--json", help="Print machine-readable JSON.")
HOME_OPTION = typer.Option(
    None, "--home", envvar="BASTION_HOME", help="Bastion home (default ./.bastion)."
)

T = TypeVar("T")


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextmanager
def reported_errors(as_json: bool = False) -> Iterator[None]:
    """Turn BastionError into a clear message and its exit code; never a traceback."""
    try:
        yield
    except BastionError as exc:
        if as_json:
            out: dict[str, Any] = {"ok": False, "error": type(exc).__name__, "message": str(exc)}
            # Errors that carry structured evidence (a broken invariant's counterexamples).
            detail = getattr(exc, "detail_json", None)
            if callable(detail):
                out["detail"] = detail()
            emit_json(out)
        else:
            # soft_wrap: a message names files and rows; a hard wrap would split them.
            # escape: the message may quote input, which must never be read as markup.
            err_console.print(
                f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True
            )
        raise typer.Exit(exc.exit_code) from None


def progress_bar(
    label: str, *, out: Console = console, disable: bool = False, transient: bool = False
) -> Progress:
    """The CLI's progress bar: `label` (Rich markup; may use ``{task.description}``), the bar,
    done/total and elapsed time. `disable` it under --json so stdout stays pure JSON."""
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=out,
        disable=disable,
        transient=transient,
    )


def read_input_file(path: Path, what: str) -> bytes:
    """The bytes of a file named on the command line; InputError naming `what` and the path."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{what} not found", file=str(path)) from None
    except OSError as exc:
        raise InputError(f"{what} unreadable ({exc.strerror})", file=str(path)) from None


def load_home(path: Path | None) -> Home:
    return Home.load(path)


def run_command(as_json: bool, fn: Callable[[], T]) -> T:
    with reported_errors(as_json):
        return fn()
