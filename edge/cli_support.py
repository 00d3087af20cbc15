"""What every vrclip CLI shares: `--version`, and one-line errors for user mistakes.

A `UserError` anywhere below a command becomes `error: <message>` on stderr and exit status 2;
other exceptions keep their traceback because they are bugs to report.
"""

from __future__ import annotations

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


def run(app: typer.Typer) -> None:
    """Entry point body: run the app, turning user errors into one line and exit status 2."""
    try:
        app(standalone_mode=False)
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
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
