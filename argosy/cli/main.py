"""The `argosy` command. Each area registers its commands from its own module."""

from __future__ import annotations

import importlib
import sys

import typer
from rich.console import Console
from rich.markup import escape

from argosy.core.errors import ArgosyError

# Modules that add commands: each defines `register(app: typer.Typer) -> None`.
COMMAND_MODULES = [
    "argosy.cli.serve_cmd",  # deploy, status, list, logs, chat, destroy, cost
    "argosy.cli.server_cmd",  # server, agent
    "argosy.cli.model_cmd",  # model make-tiny
    "argosy.cli.router_cmd",  # router
    "argosy.cli.catalog_cmd",  # gpus, plan, catalog
    "argosy.cli.sandbox_cmd",  # run, sandbox
    "argosy.cli.train_cmd",  # dataset, train
]


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="argosy",
        help="Run open LLMs, fine-tunes and sandboxes on the cheapest suitable GPUs.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)
    return app


def main() -> None:
    err = Console(stderr=True, soft_wrap=True)
    try:
        build_app()(standalone_mode=False)
    except ArgosyError as exc:
        err.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False)
        if exc.fix:
            err.print(f"[bold]fix:[/] {escape(exc.fix)}", highlight=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # click usage errors etc.
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        raise
