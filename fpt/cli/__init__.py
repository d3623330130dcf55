"""The ``fpt`` command line: a thin Typer shell over the library.

Each sub-module registers its commands on ``app``; none holds analysis logic. ``main`` maps
:class:`fpt.errors.FptError` to one line on stderr and the error's exit code (``--debug`` shows
the traceback instead), and Ctrl-C to exit code 130.
"""

from __future__ import annotations

import sys

import typer

from fpt.errors import FptError

app = typer.Typer(
    name="fpt",
    help="Fingerprints of generative models: which model made this image?",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_state = {"debug": False}


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    threads: int = typer.Option(0, "--threads", help="CPU threads for torch (0 = one per core)."),
) -> None:
    from fpt.devices import configure_threads

    _state["debug"] = debug
    configure_threads(threads or None)


def _register_commands() -> None:
    from fpt.cli import attribution, cohort, manifold, spectrum, synth, train

    for module in (spectrum, synth, train, attribution, cohort, manifold):
        module.register(app)


_register_commands()


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point."""
    try:
        # Without standalone mode click returns typer.Exit's code (and 130 for Ctrl-C) rather
        # than exiting, so the return value is the exit status.
        rv = app(args=argv, standalone_mode=False)
    except FptError as exc:
        if _state["debug"]:
            raise
        typer.echo(f"fpt: error: {exc.one_line()}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        typer.echo("fpt: interrupted; nothing was left half-written", err=True)
        return 130
    except SystemExit as exc:  # typer.Exit inside commands
        return int(exc.code or 0)
    except Exception as exc:  # click usage errors come through here in non-standalone mode
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            return exc.exit_code
        if isinstance(exc, click.exceptions.Abort):
            typer.echo("fpt: aborted", err=True)
            return 130
        if _state["debug"]:
            raise
        typer.echo(f"fpt: unexpected error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True)
        return 1
    return rv if isinstance(rv, int) else 0


def console_main() -> None:
    sys.exit(main())
