"""CLI for case reports: ``fpt report PROBE|DIR... --gallery G --out case.html [--json]``.

Thin shell: parse options, load the extractor, call :func:`fpt.casefile.build_case`, render with
:mod:`fpt.report_html`. Exit codes: 0 report written and every probe examined; 11 report written
but some probe files could not be read (they are listed in it with their error); errors use the
FptError codes (2 input, 3 store/checkpoint, 4 extractor mismatch). Unknown decisions are findings,
not failures, so they do not change the exit code (``fpt identify`` gives 10 for scripts).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from fpt.cli.attribution import EXIT_SOME_FAILED, _gallery_path
from fpt.cli.options import DeviceOpt, ExtractorOpt, GalleryOpt


def load_extractor(path: Optional[Path], device: str):
    """Indirection so tests can substitute a small extractor."""
    from fpt.cli.attribution import load_extractor as _load

    return _load(path, device)


def _refuse_overwriting_inputs(out: Path, inputs: list[Path]) -> None:
    """--out names the report; it must never be one of the files the report is about."""
    from fpt.errors import ConfigError

    target = out.resolve()
    for p in inputs:
        if p.exists() and p.resolve() == target:
            raise ConfigError("--out is one of the input files", path=out, hint="choose another file name")


def report_cmd(
    paths: list[Path] = typer.Argument(..., help="Probe images and/or folders (searched recursively)."),
    out: Path = typer.Option(..., "--out", "-o", help="HTML file to write (self-contained: figures embedded)."),
    gallery: GalleryOpt = None,
    top_k: int = typer.Option(5, "--top-k", "-k", help="Candidate models to list and plot."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Override the calibrated threshold."),
    extractor: ExtractorOpt = None,
    device: DeviceOpt = "auto",
    windows: Optional[int] = typer.Option(None, "--windows", help="n for n x n windows (default: the checkpoint's)."),
    batch_size: int = typer.Option(64, "--batch-size"),
    max_reference: int = typer.Option(64, "--max-reference",
                                      help="Enrolled images per model used for its mean spectrum (if on disk)."),
    json_out: bool = typer.Option(False, "--json", help="Also print the report's content as JSON to stdout."),
) -> None:
    """Write a case report an analyst can hand over: record, decision, evidence, limitations, reproduction."""
    from fpt.casefile import build_case
    from fpt.report import console, print_json, progress, warn
    from fpt.report_html import case_json, render_case_html, write_text_atomic

    gpath = _gallery_path(gallery)
    for name, value in (("--top-k", top_k), ("--max-reference", max_reference)):
        if value < 1:
            from fpt.errors import ConfigError

            raise ConfigError(f"{name} must be at least 1, got {value}")
    _refuse_overwriting_inputs(out, [gpath, *paths] + ([extractor] if extractor else []))
    ex = load_extractor(extractor, device)
    with progress(transient=True, disable=json_out) as prog:
        task = prog.add_task("examining", total=None)
        case = build_case(paths, gpath, ex, top_k=top_k, threshold=threshold, windows=windows,
                          batch_size=batch_size, max_reference=max_reference,
                          command_line=["fpt", *sys.argv[1:]],
                          on_total=lambda n: prog.update(task, total=n),
                          on_done=lambda _p: prog.advance(task))
    _refuse_overwriting_inputs(out, [Path(q.path) for q in case.probes])  # folders expanded now
    written = write_text_atomic(out, render_case_html(case))
    for p in case.failed:
        warn(f"could not examine {p.error}" if p.path in (p.error or "") else f"could not examine {p.path}: {p.error}")
    if json_out:
        data = case_json(case)
        data["html"] = str(written)
        print_json(data)
    else:
        n = len(case.probes)
        found = ", ".join(f"{q.name}: {q.decision.model}" for q in case.probes if q.decision is not None)
        console.print(f"wrote case report on {n} probe(s) to {written}", markup=False)
        console.print(found, markup=False, soft_wrap=True)
    if case.failed:
        raise typer.Exit(EXIT_SOME_FAILED)


def register(app: typer.Typer) -> None:
    app.command("report")(report_cmd)
