"""What every vrclip CLI shares: `--version`, and one-line errors for user mistakes.

A `UserError` anywhere below a command becomes `error: <message>` on stderr and exit status 2;
other exceptions keep their traceback because they are bugs to report.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from vrclip.edge import __version__
from vrclip.edge.errors import UserError

stderr = Console(stderr=True)


def progress_bar(
    *extra: ProgressColumn, console: Console | None = None, label: str = "{task.description}"
) -> Progress:
    """The progress bar every long command shows: what, bar, done/total, elapsed, remaining (+ extras)."""
    return Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        *extra,
        console=console,
    )


def version_option(prog: str) -> Callable[[bool], None]:
    def callback(value: bool) -> None:
        if value:
            typer.echo(f"{prog} {__version__}")
            raise typer.Exit()

    return callback


def make_app(prog: str, help_text: str) -> typer.Typer:
    """A typer app with `--version`, no shell-completion noise, and subcommands required."""
    app = typer.Typer(name=prog, help=help_text, no_args_is_help=True, add_completion=False)

    @app.callback()
    def _root(
        version: bool = typer.Option(
            False,
            "--version",
            help="Print the version and exit.",
            is_eager=True,
            callback=version_option(prog),
        ),
    ) -> None:
        pass

    return app


def _click_exception_types() -> tuple[type[Exception], ...]:
    """The `ClickException` classes a typer app can raise for a usage error.

    typer >= 0.2x raises them from its private vendored click (`typer._click`), older typer from the
    separately installed click; the two are unrelated classes. typer's own exported `BadParameter`
    derives from whichever one it uses, so its MRO finds that class without naming private modules;
    the installed click's is added when there is one.
    """
    found: list[type[Exception]] = [
        cls
        for cls in getattr(typer, "BadParameter", Exception).__mro__
        if cls.__name__ == "ClickException" and issubclass(cls, Exception)
    ]
    try:
        import click
    except ImportError:  # pragma: no cover - typer without any installed click
        pass
    else:
        found.append(click.ClickException)
    return tuple(dict.fromkeys(found))


def _show_click_exception(exc: Exception) -> None:
    show = getattr(exc, "show", None)
    if callable(show):
        show()  # click's usual text: usage line, "Try '... --help'", "Error: ..."
    else:  # pragma: no cover - every ClickException has show()
        stderr.print(f"Error: {escape(str(exc))}", highlight=False, soft_wrap=True)


def run(app: typer.Typer) -> None:
    """Entry point body: run the app, turning user errors into one line and exit status 2.

    Usage errors (missing argument, bad option value) print click's usage message and exit with
    click's status (2); `typer.Exit(code=N)` and a command's integer return value become the exit
    status, so scripts can rely on it.
    """
    try:
        _run(app)
    except SystemExit as exc:
        _leave_past_unclosed_recordings(exc.code)
        raise
    except BaseException as exc:
        if _unclosed_recordings():  # a bug: its traceback and status 1, as the interpreter would
            sys.excepthook(type(exc), exc, exc.__traceback__)
            _leave_past_unclosed_recordings(1)
        raise
    _leave_past_unclosed_recordings(0)


def _unclosed_recordings() -> bool:
    writer = sys.modules.get("vrclip.edge.recording.writer")
    return writer is not None and bool(writer.unclosed_recordings())


def _leave_past_unclosed_recordings(code: int | str | None) -> None:
    """End the process now, with its exit status, if a recording could not be closed.

    HDF5 2.0 (h5py 3.16) keeps a file it could not close (a write the disk refused) and, in its own
    exit handler, crashes closing it again: the command had already reported the failure and then
    died with a segmentation fault (status 139), which systemd and scripts read as a crash. So the
    process ends here, after flushing its output, without running the exit handlers. The command's
    work (sinks, gallery, the file itself) is closed by then."""
    if not _unclosed_recordings():
        return
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        print(code, file=sys.stderr)
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _run(app: typer.Typer) -> None:
    usage_errors = _click_exception_types()
    try:
        result = app(standalone_mode=False)
    except UserError as exc:
        stderr.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        stderr.print("interrupted")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        stderr.print("aborted")
        sys.exit(1)
    except usage_errors as exc:  # click usage errors arrive here in non-standalone mode
        _show_click_exception(exc)
        sys.exit(getattr(exc, "exit_code", 2))
    # In non-standalone mode typer returns the code of a `typer.Exit(code=N)` (and of `--help`, 0)
    # instead of raising it; a nonzero one must reach the shell.
    if isinstance(result, int) and not isinstance(result, bool) and result != 0:
        if result == 130:  # typer turns Ctrl-C into this return value, silently
            stderr.print("interrupted")
        sys.exit(result)
