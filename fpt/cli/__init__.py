"""The ``fpt`` command line: a thin Typer shell over the library.

Each sub-module registers its commands on ``app``; none holds analysis logic. ``main`` turns every
failure into one line on stderr and a non-zero exit code (``--debug`` shows the traceback
instead): :class:`fpt.errors.FptError` -> its exit code, usage errors (bad or missing options)
-> 2, OS errors (disk full, read-only, permission) -> 1, Ctrl-C -> ``fpt: interrupted`` and 130.

Nothing here imports torch: ``fpt --help``, ``--version``, usage errors and the commands that
only read a gallery answer without paying its multi-second import.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Optional

import typer

from fpt import __version__
from fpt.errors import FptError

def _hide_flag_types() -> None:
    """Show on/off flags without typer 0.29's ``<bool>`` type label (they take no value).

    typer offers no setting for it, so this wraps its option class's label method; guarded, so a
    typer without that method just keeps its own help (``.ci/latest`` would show the change).
    """
    try:
        from typer.core import TyperOption
    except ImportError:  # pragma: no cover - another typer layout
        return
    label = getattr(TyperOption, "display_type_rich", None)
    if label is None or getattr(label, "_fpt_wrapped", False):
        return

    def display_type_rich(self, ctx):  # type: ignore[no-untyped-def]
        return None if getattr(self, "is_bool_flag", False) else label(self, ctx)

    display_type_rich._fpt_wrapped = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_hide_flag_types()

app = typer.Typer(
    name="fpt",
    help="Fingerprints of generative models: which model made this image?",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_state = {"debug": False, "interrupted": False}


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"fpt {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads for torch (0 = one per core, or $FPT_THREADS)."),
    version: Optional[bool] = typer.Option(None, "--version", callback=_show_version, is_eager=True,
                                           help="Print fpt's version and exit."),
) -> None:
    from fpt.devices import configure_threads

    _state["debug"] = debug
    configure_threads(threads or None)


def _register_commands() -> None:
    from fpt.cli import attribution, cohort, evaluate, gallery, manifold, scan, spectrum, synth, train

    for module in (spectrum, synth, train, attribution, gallery, evaluate, cohort, manifold, scan):
        module.register(app)
    __import__("fpt.cli.casereport", fromlist=["register"]).register(app)  # fpt report (one line: merge-friendly)


_register_commands()


def _error(text: str) -> None:
    from fpt.report import visible

    # visible(): messages quote user paths and values, whose control characters must not reach
    # the terminal raw.
    typer.echo(visible(text), err=True)


def _on_sigint(signum, frame) -> None:
    # Typer turns KeyboardInterrupt into a bare exit status 130; remember that it was Ctrl-C so
    # main() can say so.
    _state["interrupted"] = True
    signal.default_int_handler(signum, frame)


def _usage_error(exc: typer.TyperException) -> int:
    """One line for a usage error (typer's own click fork: bad value, unknown option, missing argument)."""
    if type(exc).__name__ == "NoArgsIsHelpError":  # `fpt` or `fpt gallery` alone: the help is the answer
        text = exc.format_message()
        if text.strip():
            typer.echo(text)
        return int(exc.exit_code)
    ctx = getattr(exc, "ctx", None)
    where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    _error(f"fpt: error: {exc.format_message()}{where}")
    return int(exc.exit_code)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point."""
    _state["interrupted"] = _state["debug"] = False
    # Only the main thread may set handlers; leave a host program's own handler alone.
    previous = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    if previous is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)
    try:
        # Without standalone mode the return value is the exit status (typer.Exit's code, 130 on
        # Ctrl-C) and errors come here as exceptions instead of being printed by typer.
        rv = app(args=argv, prog_name="fpt", standalone_mode=False)
    except FptError as exc:
        if _state["debug"]:
            raise
        _error(f"fpt: error: {exc.one_line()}")
        return exc.exit_code
    except KeyboardInterrupt:
        rv, _state["interrupted"] = 130, True
    except SystemExit as exc:  # sys.exit inside commands
        return int(exc.code or 0)
    except typer.TyperException as exc:
        return _usage_error(exc)
    except typer.Abort:
        _error("fpt: aborted")
        return 130
    except OSError as exc:
        if _state["debug"]:
            raise
        what = f"{exc.filename}: " if exc.filename else ""
        _error(f"fpt: error: {what}{exc.strerror or exc} (OS error {exc.errno})")
        return 1
    except Exception as exc:
        if _state["debug"]:
            raise
        _error(f"fpt: unexpected error: {type(exc).__name__}: {exc} (run with --debug for the traceback)")
        return 1
    finally:
        if previous is signal.default_int_handler:
            signal.signal(signal.SIGINT, previous)
    if _state["interrupted"]:
        _error("fpt: interrupted; nothing was left half-written")
        return 130
    return rv if isinstance(rv, int) else 0


def console_main() -> None:
    sys.exit(main())
