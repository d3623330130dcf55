"""CLI for attribution: ``fpt embed | enroll | identify | verify | lineage``.

Thin shell: parse options, call fpt.api / fpt.attribution / fpt.scan, render with fpt.report.
Exit codes of ``fpt identify``: 0 every image identified, 10 at least one image came back
unknown, 11 every readable image identified but some files could not be read; errors use the
FptError codes (2 input, 3 store/checkpoint, 4 extractor mismatch). The gallery's own commands
are in :mod:`fpt.cli.gallery`, ``fpt eval`` in :mod:`fpt.cli.evaluate`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fpt.cli.options import (DEFAULT_MIN_LOG10_LR, OPEN_UNIT, BatchSizeOpt, CohortOpt, CsvFileOpt, DeviceOpt,
                             ExtractorOpt, FlushEveryOpt, GalleryOpt, JsonlOpt, JsonOpt, LrFromOpt, MinLrOpt, RankOpt,
                             ResumeOpt, ShardOpt, ThresholdOpt, WindowsOpt, WorkersOpt)

EXIT_UNKNOWN = 10
EXIT_SOME_FAILED = 11


def load_extractor(path: Optional[Path], device: str):
    """Indirection so tests can substitute a small extractor."""
    from fpt.extractor.checkpoint import load_extractor as _load

    return _load(path, device=device)


def _gallery_path(p: Optional[Path]) -> Path:
    from fpt.gallery import gallery_path

    return gallery_path(p)


def _cohort_for(ex, explicit: Optional[Path], lr_from: str):
    """The extractor's cohort (``--cohort`` or the file beside the checkpoint), or None; a stale
    one beside the checkpoint is warned about and left out (fpt.api.extractor_cohort)."""
    from fpt.api import extractor_cohort
    from fpt.report import warn

    return extractor_cohort(ex, explicit, lr_from, on_warning=warn)


def _gallery_cohort(g, explicit: Optional[Path]):
    """The cohort for a gallery's extractor: ``--cohort`` or the default extractor's, if it matches."""
    from fpt.cohort import cohort_path_for, load_cohort
    from fpt.errors import ConfigError
    from fpt.extractor.checkpoint import default_extractor_path

    p = explicit if explicit is not None else cohort_path_for(default_extractor_path())
    if explicit is None and not p.exists():
        raise ConfigError("no cohort for this gallery's extractor", hint="pass --cohort FILE (fpt cohort build)")
    c = load_cohort(p)
    if g.extractor_sha256:
        c.check_extractor(g.extractor_sha256)
    if c.calibration is None:
        raise ConfigError("the cohort has no calibration", path=p, hint="rebuild it with fpt cohort build")
    return c


def _report_failure(f) -> None:
    from fpt.report import warn

    warn(f"skipped {f.reason}" if str(f.path) in f.reason else f"skipped {f.path}: {f.reason}")


def _scan_device(device: str) -> str:
    """Under torchrun each rank takes its own GPU."""
    from fpt.scan import rank_device, shard_spec

    return rank_device(device, shard_spec(None))


def _scan_to_file(kind: str, files: list[Path], ex, *, jsonl: Optional[Path], csv_file: Optional[Path],
                  resume: bool, workers: int, flush_every: int, shard: Optional[str], json_out: bool,
                  windows: Optional[int], batch_size: int, gallery=None, top_k: int = 3,
                  threshold: Optional[float] = None, decision: Optional[dict] = None) -> int:
    """Run a streaming scan (identify or embed) into --jsonl/--csv-file; render its summary; exit code."""
    from fpt.report import print_json, print_scan_summary, progress
    from fpt.scan import scan_embed, scan_identify, shard_bounds, shard_spec

    sh = shard_spec(shard)
    out, fmt = (jsonl, "jsonl") if jsonl is not None else (csv_file, "csv")
    lo, hi = shard_bounds(len(files), sh.index, sh.count)
    common = dict(fmt=fmt, windows=windows, batch_size=batch_size, workers=workers, resume=resume,
                  flush_every=flush_every, shard=sh)
    with progress(transient=True, disable=json_out or sh.rank != 0) as prog:
        task = prog.add_task(kind if sh.count == 1 else f"{kind} (part {sh.index} of {sh.count})", total=hi - lo)
        common["on_done"] = lambda k: prog.advance(task, k)
        if kind == "identify":
            s = scan_identify(files, out, gallery, ex, top_k=top_k, threshold=threshold, **(decision or {}), **common)
        else:
            s = scan_embed(files, out, ex, **common)
    if sh.world > 1 and sh.auto_merge and sh.rank != 0:
        return 0  # rank 0 reports the merged scan
    if json_out:
        print_json(s)
    else:
        print_scan_summary(s)
    if not s.images and s.records:
        from fpt.errors import EmptyInputError

        raise EmptyInputError(f"none of the {s.records} input image(s) could be read", path=out)
    if sh.count > 1 or kind != "identify":
        return 0  # exit codes 10/11 are identify's, and describe a whole scan (not one part)
    return EXIT_UNKNOWN if s.unknown else (EXIT_SOME_FAILED if s.failed else 0)


def _check_scan_options(jsonl, csv_file, resume, workers, shard, *stdout_flags) -> bool:
    """True when a streaming scan is asked for; refuse combinations that cannot work."""
    from fpt.errors import ConfigError
    from fpt.scan import shard_spec

    if jsonl is not None and csv_file is not None:
        raise ConfigError("--jsonl and --csv-file are exclusive")
    to_file = jsonl is not None or csv_file is not None
    if not to_file:
        for flag, name in ((resume, "--resume"), (workers, "--workers"), (shard, "--shard")):
            if flag:
                raise ConfigError(f"{name} works with a streamed scan", hint="add --jsonl FILE or --csv-file FILE")
        if shard_spec(None).world > 1:
            raise ConfigError("under torchrun, results must go to a file", hint="add --jsonl FILE or --csv-file FILE")
    elif any(stdout_flags):
        raise ConfigError("--csv (to stdout) and --jsonl/--csv-file are exclusive",
                          hint="--json prints the scan's summary")
    return to_file


def _check_embed_output(out: Optional[Path], to_file: bool) -> None:
    from fpt.errors import ConfigError

    if to_file and out is not None:
        raise ConfigError("--out (.npz) and --jsonl/--csv-file are exclusive")
    if not to_file and out is None:
        raise ConfigError("no output given", hint="--out FILE.npz, or --jsonl FILE / --csv-file FILE for big folders")
    if out is not None:
        from fpt.storage import check_writable

        check_writable(out, what="embeddings file")  # before the slow part (and torch's import)


# ---------------------------------------------------------------- embed


def embed_cmd(
    paths: list[Path] = typer.Argument(..., help="Images and/or folders (searched recursively)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output .npz (embeddings, paths, low_confidence, extractor hash)."),
    extractor: ExtractorOpt = None,
    device: DeviceOpt = "auto",
    windows: WindowsOpt = None,
    batch_size: BatchSizeOpt = 64,
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary."),
    jsonl: JsonlOpt = None,
    csv_file: CsvFileOpt = None,
    resume: ResumeOpt = False,
    workers: WorkersOpt = 0,
    flush_every: FlushEveryOpt = 256,
    shard: ShardOpt = None,
) -> None:
    """Write fingerprint embeddings of images to an .npz (or stream them to --jsonl/--csv-file)."""
    to_file = _check_scan_options(jsonl, csv_file, resume, workers, shard)
    _check_embed_output(out, to_file)
    from fpt.api import embed
    from fpt.extractor.embed import save_embeddings_npz
    from fpt.images import find_images
    from fpt.report import console, print_json, progress

    files = find_images(paths)
    ex = load_extractor(extractor, _scan_device(device))
    if to_file:
        code = _scan_to_file("embed", files, ex, jsonl=jsonl, csv_file=csv_file, resume=resume, workers=workers,
                             flush_every=flush_every, shard=shard, json_out=json_out, windows=windows,
                             batch_size=batch_size)
        if code:
            raise typer.Exit(code)
        return
    with progress(transient=True, disable=json_out) as prog:
        task = prog.add_task("embedding", total=len(files))
        e = embed(files, ex, windows=windows, batch_size=batch_size, on_done=lambda _p: prog.advance(task),
                  on_failure=_report_failure)
    e.require_some(hint="see the warnings above")
    ok, failed = e.images, e.failures
    save_embeddings_npz(out, ok, ex)
    summary = {"out": str(out), "images": len(ok), "failed": len(failed), "dim": int(ex.embedding_dim),
               "low_confidence": sum(r.low_confidence for r in ok), "extractor_sha256": ex.sha256}
    if json_out:
        print_json(summary)
    else:
        console.print(f"wrote {len(ok)} embeddings ({summary['dim']}-d, {summary['low_confidence']} low-confidence) "
                      f"to {out}; {len(failed)} files skipped")


# ---------------------------------------------------------------- enroll


def enroll_cmd(
    model: str = typer.Argument(..., help="Model name (created if new, extended otherwise)."),
    paths: list[Path] = typer.Argument(..., help="Images and/or folders made by that model."),
    gallery: GalleryOpt = None,
    meta: Optional[list[str]] = typer.Option(None, "--meta", help="key=value metadata (repeatable)."),
    extractor: ExtractorOpt = None,
    device: DeviceOpt = "auto",
    windows: WindowsOpt = None,
    batch_size: BatchSizeOpt = 64,
    rank: RankOpt = "whitened",
    no_check: bool = typer.Option(False, "--no-check", help=(
        "Skip the gallery check after enrolling (expected error rates and accuracy, models it cannot tell apart): "
        "for scripted enrolment of many models into a large gallery, where the check costs most of the time; "
        "`fpt gallery calibrate` runs it once at the end.")),
    json_out: JsonOpt = False,
) -> None:
    """Enroll a model from its images (re-enrolling an image already there is a no-op).

    Then checks the whole gallery: the expected false-accept / false-reject rates of the decision,
    the expected top-1 accuracy under --rank (the ranking `fpt identify --rank` uses), and which
    models it cannot tell apart.
    """
    from fpt.api import enroll
    from fpt.gallery import parse_meta, writable_gallery_path
    from fpt.report import progress

    _check_rank(rank)
    gpath = writable_gallery_path(gallery)  # before the slow part (and torch's import)
    meta_d = parse_meta(meta)
    from fpt.images import find_images

    files = find_images(paths)
    ex = load_extractor(extractor, device)
    with progress(transient=True, disable=json_out) as prog:
        task = prog.add_task(f"enrolling {model}", total=len(files))
        res = enroll(model, files, gpath, ex, meta=meta_d, windows=windows, batch_size=batch_size,
                     on_done=lambda _p: prog.advance(task), on_failure=_report_failure)
    from fpt.report_attribution import render_enrolment

    render_enrolment(res, None if no_check else check_with_status(res.final, rank, json_out), json_out=json_out)


def check_with_status(g, rank: str, json_out: bool):
    """:func:`fpt.attribution.check_gallery` under a spinner on stderr: it takes seconds to
    minutes on a large gallery (none off a terminal or with --json)."""
    from fpt.attribution import check_gallery
    from fpt.report import progress

    with progress(transient=True, disable=json_out) as prog:
        prog.add_task(f"checking the gallery ({len(g.models)} models)", total=None)
        return check_gallery(g, rank=rank)


# ---------------------------------------------------------------- identify


def identify_cmd(
    paths: list[Path] = typer.Argument(..., help="Images and/or folders to attribute."),
    gallery: GalleryOpt = None,
    top_k: int = typer.Option(3, "--top-k", "-k", min=1, help="How many candidate models to list."),
    threshold: ThresholdOpt = None,
    min_lr: MinLrOpt = DEFAULT_MIN_LOG10_LR,
    lr_from: LrFromOpt = "gallery",
    rank: RankOpt = "whitened",
    cohort: CohortOpt = None,
    extractor: ExtractorOpt = None,
    device: DeviceOpt = "auto",
    windows: WindowsOpt = None,
    batch_size: BatchSizeOpt = 64,
    json_out: JsonOpt = False,
    csv_out: bool = typer.Option(False, "--csv", help="CSV to stdout."),
    jsonl: JsonlOpt = None,
    csv_file: CsvFileOpt = None,
    resume: ResumeOpt = False,
    workers: WorkersOpt = 0,
    flush_every: FlushEveryOpt = 256,
    shard: ShardOpt = None,
) -> None:
    """Which enrolled model made each image, or unknown (exit 10 if any unknown).

    Each image gets its best model's raw cosine, cohort-normalised score (when the extractor
    has a cohort), calibrated log10 likelihood ratio and the ENFSI verbal scale; it is
    attributed when the log10 LR reaches --min-lr (docs/calibration.md).
    """
    from fpt.api import identify_decision
    from fpt.images import find_images
    from fpt.report import warn

    if json_out and csv_out:
        from fpt.errors import ConfigError

        raise ConfigError("--json and --csv are exclusive")
    to_file = _check_scan_options(jsonl, csv_file, resume, workers, shard, csv_out)
    _check_rank(rank)
    g = _gallery_with_models(gallery)
    files = find_images(paths)
    ex = load_extractor(extractor, _scan_device(device))
    g.check_extractor(ex.sha256)
    decision = dict(cohort=_cohort_for(ex, cohort, lr_from), min_log10_lr=min_lr, lr_from=lr_from, rank=rank)
    if to_file:
        code = _scan_to_file("identify", files, ex, jsonl=jsonl, csv_file=csv_file, resume=resume,
                             workers=workers, flush_every=flush_every, shard=shard, json_out=json_out,
                             windows=windows, batch_size=batch_size, gallery=g, top_k=top_k, threshold=threshold,
                             decision=decision)
        if code:
            raise typer.Exit(code)
        return
    results, failed = _identify_files(ex, files, g, windows=windows, batch_size=batch_size, quiet=json_out or csv_out,
                                      top_k=top_k, threshold=threshold, decision=decision)
    src, undecidable = identify_decision(results, g, threshold=threshold, min_log10_lr=min_lr, lr_from=lr_from)
    if undecidable:
        warn("no likelihood-ratio calibration and no gallery threshold (needs 2+ models with 2+ images): "
             "no image can come back unknown; pass --threshold or enroll more models")
    _render_identifications(results, failed, g, src, top_k=top_k, decision=decision, json_out=json_out,
                            csv_out=csv_out)


def _check_rank(rank: str) -> None:
    """A bad --rank fails before any gallery or image is read."""
    from fpt.attribution import rank_shrinkage

    rank_shrinkage(rank)


def _render_identifications(results, failed, g, src: str, *, top_k: int, decision: dict, json_out: bool,
                            csv_out: bool) -> None:
    """JSON, CSV or a table; then exit 10 when an image is unknown, 11 when a file failed."""
    from fpt.report_attribution import render_identifications

    render_identifications(results, failed, g, src, top_k=top_k, decision=decision,
                           fmt="json" if json_out else "csv" if csv_out else "table")
    if any(not r.identified for r in results):
        raise typer.Exit(EXIT_UNKNOWN)
    if failed:
        raise typer.Exit(EXIT_SOME_FAILED)


def _gallery_with_models(gallery: Optional[Path]):
    from fpt.gallery import load_gallery

    g = load_gallery(_gallery_path(gallery))
    if not g.models:
        from fpt.errors import InputError

        raise InputError("the gallery has no models", path=g.path, hint="fpt enroll MODEL IMAGES...")
    return g


def _identify_files(ex, files: list[Path], g, *, windows: Optional[int], batch_size: int, quiet: bool, top_k: int,
                    threshold: Optional[float], decision: dict):
    """:func:`fpt.api.identify` with a bar; unreadable files are warned about as they fail."""
    from fpt.api import identify
    from fpt.report import progress

    with progress(transient=True, disable=quiet) as prog:
        task = prog.add_task("identifying", total=len(files))
        return identify(files, g, ex, top_k=top_k, threshold=threshold, windows=windows, batch_size=batch_size,
                        on_done=lambda _p: prog.advance(task), on_failure=_report_failure, **decision)


# ---------------------------------------------------------------- verify


def verify_cmd(
    a: Path = typer.Argument(..., help="Side A: an image or folder (N_S images are averaged)."),
    b: Path = typer.Argument(..., help="Side B: an image or folder."),
    threshold: ThresholdOpt = None,
    far: float = typer.Option(0.05, "--far", hidden=True, callback=OPEN_UNIT, help="Ignored since decisions use the likelihood "
                              "ratio (--min-lr); kept so existing scripts still run."),
    min_lr: MinLrOpt = DEFAULT_MIN_LOG10_LR,
    lr_from: LrFromOpt = "gallery",
    cohort: CohortOpt = None,
    gallery: GalleryOpt = None,
    extractor: ExtractorOpt = None,
    device: DeviceOpt = "auto",
    windows: WindowsOpt = None,
    batch_size: BatchSizeOpt = 64,
    json_out: JsonOpt = False,
) -> None:
    """Were A and B made by the same model? Exit 0 same, 10 different.

    Reports the raw cosine, the cohort-normalised score, the calibrated log10 likelihood ratio
    and its ENFSI verbal scale; "same model" when the log10 LR reaches --min-lr.
    """
    from fpt.api import verify
    from fpt.images import find_images
    from fpt.report import print_json, progress, warn
    from fpt.report_attribution import render_verification

    files = [find_images(a), find_images(b)]
    ex = load_extractor(extractor, device)
    with progress(transient=True, disable=json_out) as prog:
        task = prog.add_task("verifying", total=sum(map(len, files)))
        v = verify(*files, gallery, ex, threshold=threshold, min_log10_lr=min_lr, lr_from=lr_from, cohort=cohort,
                   windows=windows, batch_size=batch_size, on_done=lambda _p: prog.advance(task),
                   on_failure=_report_failure, on_warning=warn)
    if json_out:
        print_json(v)
    else:
        render_verification(v)
    if not v.same_model:
        raise typer.Exit(EXIT_UNKNOWN)


# ---------------------------------------------------------------- lineage


def lineage_cmd(
    gallery: GalleryOpt = None,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Dendrogram PNG (default: lineage.png)."),
    models: Optional[list[str]] = typer.Option(None, "--model", "-m", help="Only these models (repeatable)."),
    scores: str = typer.Option("raw", "--scores", help="raw (cosine distance) or snorm (cohort-normalised "
                               "similarity, needs the extractor's cohort or --cohort)."),
    cohort: CohortOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Cluster the gallery's fingerprints (cosine, average linkage): dendrogram PNG + text tree."""
    import numpy as np

    from fpt.attribution import lineage
    from fpt.gallery import load_gallery
    from fpt.report import console, print_json

    g = load_gallery(_gallery_path(gallery))
    names = list(models) if models else g.names()
    fps = np.stack([g.get(n).fingerprint for n in names]) if names else np.zeros((0, 1))
    if scores not in ("raw", "snorm"):
        from fpt.errors import ConfigError

        raise ConfigError(f"--scores must be raw or snorm, not '{scores}'")
    coh = None
    if scores == "snorm":
        coh = _gallery_cohort(g, cohort)
    lin = lineage(names, fps, coh.fingerprints() if coh else None, coh.calibration.top_n if coh else None)
    title = ("fpt lineage (cohort-normalised distance, average linkage)" if coh else
             "fpt lineage (cosine distance, average linkage)")
    png = lin.plot(out or Path("lineage.png"), title=title)
    if json_out:
        from scipy.spatial.distance import squareform

        print_json({"models": names, "linkage": lin.linkage, "png": str(png),
                    "cosine_distance": squareform(lin.distances)})
        return
    console.print(lin.text_tree(), markup=False)
    console.print(f"dendrogram written to {png}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to app."""
    for name, fn in (("embed", embed_cmd), ("enroll", enroll_cmd), ("identify", identify_cmd),
                     ("verify", verify_cmd), ("lineage", lineage_cmd)):
        app.command(name)(fn)
