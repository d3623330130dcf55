"""CLI for attribution: ``fpt embed | enroll | gallery ... | identify | verify | lineage | eval``.

Thin shell: parse options, call fpt.extractor.embed / fpt.gallery / fpt.attribution /
fpt.evaluation, render with fpt.report. Exit codes of ``fpt identify``: 0 every image identified,
10 at least one image came back unknown, 11 every readable image identified but some files could
not be read; errors use the FptError codes (2 input, 3 store/checkpoint, 4 extractor mismatch).
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Optional

import typer

from fpt.cli.options import DEVICE_HELP, HALF_OPEN_UNIT, OPEN_UNIT

EXIT_UNKNOWN = 10
EXIT_SOME_FAILED = 11
ENROLL_CHUNK = 256

_EXTRACTOR_HELP = "Extractor checkpoint (.pt); default: the weights shipped with fpt."
_DEVICE_HELP = DEVICE_HELP
_GALLERY_HELP = "Gallery file (default $FPT_GALLERY or $XDG_DATA_HOME/fpt/gallery.h5)."
_WINDOWS_HELP = "n for n x n windows (default: the checkpoint's)."
_BATCH_HELP = "Window crops per forward pass (bounds memory)."
_MIN_LR_HELP = ("Attribute / call 'same model' when log10 LR reaches this level (0: LR >= 1, the evidence favours "
                "it; 1: LR >= 10, moderate support).")
_LR_FROM_HELP = ("Likelihood-ratio calibration: gallery (raw cosine, fitted on the gallery's own images; default) or "
                 "cohort (adaptive S-norm against the extractor's cohort, fitted on cohort models).")
_COHORT_HELP = "Cohort file (default: <extractor>.cohort.h5 beside the checkpoint, if present)."
DEFAULT_MIN_LOG10_LR = 0.0  # = fpt.calibration.DEFAULT_MIN_LOG10_LR (not imported: keeps CLI start-up light)


def load_extractor(path: Optional[Path], device: str):
    """Indirection so tests can substitute a small extractor."""
    from fpt.extractor.checkpoint import load_extractor as _load

    return _load(path, device=device)


def _cohort_for(ex, explicit: Optional[Path], lr_from: str):
    """The extractor's cohort (``--cohort`` or the file beside the checkpoint), or None."""
    from fpt.attribution import LR_SOURCES
    from fpt.cohort import find_cohort
    from fpt.errors import ConfigError, ExtractorMismatchError

    if lr_from not in LR_SOURCES:
        raise ConfigError(f"--lr-from must be one of {', '.join(LR_SOURCES)}, not '{lr_from}'")
    try:
        coh = find_cohort(ex.sha256, getattr(ex, "path", None), explicit)
    except ExtractorMismatchError as exc:
        if explicit is not None or lr_from == "cohort":
            raise
        # the cohort beside the checkpoint is stale (new weights, cohort not rebuilt): the default
        # gallery-calibrated LR does not need it, so say so and carry on without normalised scores
        from fpt.report import warn

        warn(exc.one_line())
        coh = None
    if lr_from == "cohort" and (coh is None or coh.calibration is None):
        raise ConfigError("--lr-from cohort: this extractor has no calibrated cohort",
                          hint="pass --cohort FILE or build one: fpt cohort build (docs/calibration.md)")
    return coh


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


def _gallery_path(p: Optional[Path]) -> Path:
    from fpt.gallery import default_gallery_path

    return Path(p) if p is not None else default_gallery_path()


def _embed_paths(ex, paths: list[Path], *, windows: Optional[int], batch_size: int, quiet: bool,
                 description: str = "embedding"):
    """Embed files with a progress bar; returns (embeddings list, failures list)."""
    from fpt.extractor.embed import EmbedFailure, iter_embeddings
    from fpt.report import progress

    ok, failed = [], []
    with progress(transient=True, disable=quiet) as prog:
        task = prog.add_task(description, total=len(paths))
        for r in iter_embeddings(ex, paths, windows=windows, batch_size=batch_size,
                                 on_done=lambda _p: prog.advance(task)):
            (failed if isinstance(r, EmbedFailure) else ok).append(r)
    return ok, failed


def _report_failures(failed, quiet: bool = False) -> None:
    from fpt.report import warn

    for f in failed:
        warn(f"skipped {f.reason}" if str(f.path) in f.reason else f"skipped {f.path}: {f.reason}")


def _require_readable(ok, failed) -> None:
    """Batch commands carry on past bad files, but a run where every file failed is an error."""
    if not ok:
        from fpt.errors import EmptyInputError

        raise EmptyInputError(f"none of the {len(failed)} input image(s) could be read", hint="see the warnings above")


def _digits(*values) -> int:
    """Decimals that keep cosine scores apart: embeddings of some extractors crowd near 1."""
    vals = [abs(float(v)) for v in values if v is not None]
    return 6 if vals and max(vals) >= 0.999 else 4


def _short_date(iso: str) -> str:
    return iso[:16].replace("T", " ") if iso else ""


# Options of the streaming scan (fpt identify / fpt embed with --jsonl or --csv-file), see fpt.scan.
_JSONL_HELP = "Write one JSON record per image to FILE as the scan goes (chunked, fsync'ed; see docs/scaling.md)."
_CSV_FILE_HELP = "Write one CSV row per image to FILE as the scan goes (like --jsonl)."
_RESUME_HELP = "Continue the scan in FILE: skip images already there (same path and sha256), append the rest."
_WORKERS_HELP = "Decoding processes for --jsonl/--csv-file scans (0: decode in the main process)."
_FLUSH_HELP = "Records per fsync'ed chunk: a killed scan loses at most this many."
_SHARD_HELP = "Scan only part i of n (0-based) into FILE.rank<i>-of-<n>; join them with `fpt scan merge FILE`."


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


def register(app: typer.Typer) -> None:
    """Add this module's commands to app."""

    # ------------------------------------------------------------ embed
    @app.command("embed")
    def embed_cmd(
        paths: list[Path] = typer.Argument(..., help="Images and/or folders (searched recursively)."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output .npz (embeddings, paths, low_confidence, extractor hash)."),
        extractor: Optional[Path] = typer.Option(None, "--extractor", help=_EXTRACTOR_HELP),
        device: str = typer.Option("auto", "--device", help=_DEVICE_HELP),
        windows: Optional[int] = typer.Option(None, "--windows", min=1, help=_WINDOWS_HELP),
        batch_size: int = typer.Option(64, "--batch-size", min=1, help=_BATCH_HELP),
        json_out: bool = typer.Option(False, "--json", help="Print a JSON summary."),
        jsonl: Optional[Path] = typer.Option(None, "--jsonl", help=_JSONL_HELP),
        csv_file: Optional[Path] = typer.Option(None, "--csv-file", help=_CSV_FILE_HELP),
        resume: bool = typer.Option(False, "--resume", help=_RESUME_HELP),
        workers: int = typer.Option(0, "--workers", min=0, help=_WORKERS_HELP),
        flush_every: int = typer.Option(256, "--flush-every", min=1, help=_FLUSH_HELP),
        shard: Optional[str] = typer.Option(None, "--shard", help=_SHARD_HELP),
    ) -> None:
        """Write fingerprint embeddings of images to an .npz (or stream them to --jsonl/--csv-file)."""
        to_file = _check_scan_options(jsonl, csv_file, resume, workers, shard)
        if to_file and out is not None:
            from fpt.errors import ConfigError

            raise ConfigError("--out (.npz) and --jsonl/--csv-file are exclusive")
        if not to_file and out is None:
            from fpt.errors import ConfigError

            raise ConfigError("no output given", hint="--out FILE.npz, or --jsonl FILE / --csv-file FILE for big folders")
        if out is not None:
            from fpt.storage import check_writable

            check_writable(out, what="embeddings file")  # before the slow part (and torch's import)
        from fpt.extractor.embed import save_embeddings_npz
        from fpt.images import find_images
        from fpt.report import console, print_json
        files = find_images(paths)
        ex = load_extractor(extractor, _scan_device(device))
        if to_file:
            code = _scan_to_file("embed", files, ex, jsonl=jsonl, csv_file=csv_file, resume=resume, workers=workers,
                                 flush_every=flush_every, shard=shard, json_out=json_out, windows=windows,
                                 batch_size=batch_size)
            if code:
                raise typer.Exit(code)
            return
        ok, failed = _embed_paths(ex, files, windows=windows, batch_size=batch_size, quiet=json_out)
        _report_failures(failed)
        _require_readable(ok, failed)
        save_embeddings_npz(out, ok, ex)
        summary = {"out": str(out), "images": len(ok), "failed": len(failed), "dim": int(ex.embedding_dim),
                   "low_confidence": sum(r.low_confidence for r in ok), "extractor_sha256": ex.sha256}
        if json_out:
            print_json(summary)
        else:
            console.print(f"wrote {len(ok)} embeddings ({summary['dim']}-d, {summary['low_confidence']} low-confidence) "
                          f"to {out}; {len(failed)} files skipped")

    # ------------------------------------------------------------ enroll
    @app.command("enroll")
    def enroll_cmd(
        model: str = typer.Argument(..., help="Model name (created if new, extended otherwise)."),
        paths: list[Path] = typer.Argument(..., help="Images and/or folders made by that model."),
        gallery: Optional[Path] = typer.Option(None, "--gallery", "-g", help=_GALLERY_HELP),
        meta: Optional[list[str]] = typer.Option(None, "--meta", help="key=value metadata (repeatable)."),
        extractor: Optional[Path] = typer.Option(None, "--extractor", help=_EXTRACTOR_HELP),
        device: str = typer.Option("auto", "--device", help=_DEVICE_HELP),
        windows: Optional[int] = typer.Option(None, "--windows", min=1, help=_WINDOWS_HELP),
        batch_size: int = typer.Option(64, "--batch-size", min=1, help=_BATCH_HELP),
        json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Enroll a model from its images (re-enrolling an image already there is a no-op)."""
        from fpt.gallery import add_embeddings, check_gallery_writable, edit_gallery, load_gallery, parse_meta
        from fpt.storage import file_sha256
        from fpt.report import console, literal, print_json, warn

        gpath = _gallery_path(gallery)
        if gallery is None:  # the default location's folder is ours to create
            gpath.parent.mkdir(parents=True, exist_ok=True)
        gpath = check_gallery_writable(gpath)  # before the slow part (and torch's import); symlinks resolved once
        from fpt.images import find_images

        meta_d = parse_meta(meta)
        files = find_images(paths)
        n_input = len(files)
        ex = load_extractor(extractor, device)
        hashes: dict[Path, str] = {}  # computed once, reused when committing
        if gpath.exists():  # fail fast, before the slow part
            g0 = load_gallery(gpath)
            g0.check_extractor(ex.sha256)
            if model in g0.models:
                known = set(g0.models[model].hashes)
                hashes = {p: file_sha256(p) for p in files}
                files = [p for p in files if hashes[p] not in known]
        import numpy as np

        from fpt.extractor.embed import EmbedFailure, iter_embeddings
        from fpt.report import progress

        # Commit every ENROLL_CHUNK images: an interrupted enrolment of a big folder keeps what it
        # has done, and re-running it skips those images (same sha256) and carries on.
        ok, failed, pending = [], [], []
        res = None
        cal = None
        final = None

        def commit() -> None:
            nonlocal res, cal, final
            with edit_gallery(gpath, create=True) as g:
                r = add_embeddings(
                    g, model,
                    np.stack([x.embedding for x in pending]) if pending else np.zeros((0, int(ex.embedding_dim)), np.float32),
                    [str(Path(x.path).resolve()) for x in pending], [hashes.get(x.path) or file_sha256(x.path) for x in pending],
                    np.array([x.low_confidence for x in pending], bool), ex.sha256, int(ex.embedding_dim), meta_d)
                if r.total == 0:  # nothing readable for a new model: leave the gallery untouched
                    raise _no_images(model, failed)
            cal = g.calibration  # after the block: edit_gallery recalibrates on the way out
            final = g
            res = r if res is None else type(r)(model, res.added + r.added, res.duplicates + r.duplicates, r.total)
            pending.clear()

        with progress(transient=True, disable=json_out) as prog:
            task = prog.add_task(f"enrolling {model}", total=len(files))
            for r in iter_embeddings(ex, files, windows=windows, batch_size=batch_size,
                                     on_done=lambda _p: prog.advance(task)):
                if isinstance(r, EmbedFailure):
                    failed.append(r)
                    continue
                ok.append(r)
                pending.append(r)
                if len(pending) >= ENROLL_CHUNK:
                    commit()
        _report_failures(failed)
        if pending or res is None:
            commit()
        low = sum(r.low_confidence for r in ok)
        skipped_dupes = n_input - len(files) + res.duplicates
        from fpt.attribution import check_gallery
        from fpt.report import gallery_check_messages

        chk = check_gallery(final)
        rates, warnings = gallery_check_messages(chk)
        if json_out:
            print_json({"model": model, "gallery": str(gpath), "added": res.added,
                        "already_enrolled": skipped_dupes,
                        "failed": [{"path": str(f.path), "error": f.reason} for f in failed],
                        "images": res.total, "low_confidence": low,
                        "threshold": cal.threshold if cal else None,
                        "decision": {"rule": chk.rule, "level": chk.level, "expected_far": chk.expected_far,
                                     "expected_frr": chk.expected_frr, "loo_accuracy": chk.loo_accuracy},
                        "warnings": warnings})
            return
        console.print(f"enrolled [bold]{literal(model)}[/bold]: {res.added} new image(s), {skipped_dupes} already enrolled, "
                      f"{len(failed)} unreadable; {res.total} image(s) in total -> {literal(gpath)}", markup=True)
        if low:
            warn(f"{low} image(s) were smaller than the extractor's window and were mirror-padded (low confidence)")
        if res.total < 10:
            warn(f"{model} has {res.total} image(s); 10 or more make a much more reliable fingerprint")
        if rates:
            console.print(rates, markup=False)
        for w in warnings:
            warn(w)

    def _no_images(model: str, failed):
        from fpt.errors import EmptyInputError

        return EmptyInputError(f"no readable images to enroll for '{model}' ({len(failed)} failed)")

    # ------------------------------------------------------------ gallery sub-commands
    gal = typer.Typer(help="Inspect and edit the gallery: list, show, remove, rename, export, import, calibrate.",
                      no_args_is_help=True)
    app.add_typer(gal, name="gallery")

    @gal.command("list")
    def gallery_list(
        gallery: Optional[Path] = typer.Option(None, "--gallery", "-g", help=_GALLERY_HELP),
        json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    ) -> None:
        """Enrolled models with image counts and dates."""
        from fpt.gallery import load_gallery
        from fpt.report import print_json, print_table

        g = load_gallery(_gallery_path(gallery))
        rows = [[n, m.count, int(m.low_confidence.sum()), m.created, m.updated,
                 ", ".join(f"{k}={v}" for k, v in sorted(m.meta.items()))] for n, m in sorted(g.models.items())]
        if not json_out:  # minutes are enough on screen; --json keeps full ISO-8601 times
            rows = [r[:3] + [_short_date(r[3]), _short_date(r[4])] + r[5:] for r in rows]
        if json_out:
            print_json({"gallery": str(g.path), "extractor_sha256": g.extractor_sha256, "calibration": g.calibration,
                        "models": [dict(zip(["name", "images", "low_confidence", "created", "updated", "meta"], r))
                                   for r in rows]})
            return
        cal = g.calibration
        cap = (f"extractor {(g.extractor_sha256 or '-')[:12]}; threshold "
               + (f"{cal.threshold:.{_digits(cal.threshold)}f} at FAR {cal.far:g}" if cal else "not calibrated"))
        print_table(f"gallery {g.path}", ["model", "images", "low-conf", "created", "updated", "meta"], rows,
                    caption=cap)

    @gal.command("show")
    def gallery_show(
        model: str = typer.Argument(...),
        gallery: Optional[Path] = typer.Option(None, "--gallery", "-g", help=_GALLERY_HELP),
        json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    ) -> None:
        """One model: metadata, fingerprint summary and its enrolled images."""
        import numpy as np

        from fpt.gallery import load_gallery
        from fpt.report import console, literal, print_json, print_table

        g = load_gallery(_gallery_path(gallery))
        m = g.get(model)
        fp = m.fingerprint
        self_sim = (m.embeddings @ fp).astype(float)
        info = {"model": m.name, "images": m.count, "created": m.created, "updated": m.updated, "meta": m.meta,
                "extractor_sha256": g.extractor_sha256, "fingerprint_norm_of_mean": float(
                    np.linalg.norm(m.embeddings.mean(axis=0))) if m.count else None,
                "images_list": [{"path": p, "sha256": h, "enrolled": d, "low_confidence": bool(lc),
                                 "similarity_to_fingerprint": float(s)}
                                for p, h, d, lc, s in zip(m.paths, m.hashes, m.dates, m.low_confidence, self_sim)]}
        if json_out:
            print_json(info)
            return
        console.print(f"[bold]{literal(m.name)}[/bold]: {m.count} images, created {m.created}, updated {m.updated}",
                      markup=True)
        if m.meta:
            console.print("meta: " + ", ".join(f"{k}={v}" for k, v in sorted(m.meta.items())))
        console.print(f"consistency (|mean of unit embeddings|, 1 = identical): {info['fingerprint_norm_of_mean']:.3f}")
        print_table(None, ["path", "sha256", "enrolled", "low-conf", "cos to fingerprint"],
                    [[p, h[:12], _short_date(d), bool(lc), float(s)] for p, h, d, lc, s in
                     zip(m.paths, m.hashes, m.dates, m.low_confidence, self_sim)])

    @gal.command("remove")
    def gallery_remove(
        model: str = typer.Argument(...),
        gallery: Optional[Path] = typer.Option(None, "--gallery", "-g", help=_GALLERY_HELP),
    ) -> None:
        """Remove a model and all its images."""
        from fpt.gallery import edit_gallery, remove_model
        from fpt.report import console

        with edit_gallery(_gallery_path(gallery)) as g:
            remove_model(g, model)
        console.print(f"removed {model}")

    @gal.command("rename")
    def gallery_rename(
        old: str = typer.Argument(...), new: str = typer.Argument(...),
        gallery: Optional[Path] = typer.Option(None, "--gallery", "-g", help=_GALLERY_HELP),
    ) -> None:
        """Rename a model."""
        from fpt.gallery import edit_gallery, rename_model
        from fpt.report import console

        with edit_gallery(_gallery_path(gallery)) as g:
            rename_model(g, old, new)
        console.print(f"renamed {old} -> {new}")

    @gal.command("export")
    def gallery_export(
        out: Path = typer.Argument(..., help="CSV file to write (one row per enrolled image, with its embedding)."),
        gallery: Optional[Path] = typer.Option(None, "--gallery", "-g", help=_GALLERY_HELP),
    ) -> None:
        """Export every enrolled image (model, path, sha256, date, metadata, embedding) to CSV."""
        from fpt.gallery import export_csv, load_gallery
        from fpt.report import console

        n = export_csv(load_gallery(_gallery_path(gallery)), out)
        console.print(f"wrote {n} rows to {out}")

    @gal.command("import")
    def gallery_import(
        src: Path = typer.Argument(..., help="CSV written by `fpt gallery export`."),
        gallery: Optional[Path] = typer.Option(None, "--gallery", "-g", help=_GALLERY_HELP),
    ) -> None:
        """Merge a CSV export into the gallery (same extractor only; duplicates skipped)."""
        from fpt.gallery import edit_gallery, import_csv
        from fpt.report import console

        with edit_gallery(_gallery_path(gallery), create=True) as g:
            res = import_csv(g, src)
        for r in res:
            console.print(f"{r.model}: {r.added} added, {r.duplicates} already there, {r.total} in total")

    @gal.command("calibrate")
    def gallery_calibrate(
        far: float = typer.Option(0.05, "--far", callback=HALF_OPEN_UNIT, help="False-accept rate to allow for unknown images, in [0, 1)."),
        gallery: Optional[Path] = typer.Option(None, "--gallery", "-g", help=_GALLERY_HELP),
        json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    ) -> None:
        """Choose and store the identification threshold from the gallery's own images.

        Leave-one-out: each enrolled image is scored against its own model's fingerprint rebuilt
        without it (genuine) and against the best other model (as if its model were unknown:
        impostor). The threshold lets through at most --far of the impostors.
        """
        from fpt.attribution import verify_threshold
        from fpt.gallery import calibrate, edit_gallery
        from fpt.report import console, print_json, print_table

        with edit_gallery(_gallery_path(gallery)) as g:
            cal = calibrate(g, far)
        vrows = []
        for n_s in (1, 5, 10):
            try:
                v = verify_threshold(g, n_s, far)
                vrows.append(v)
            except Exception:
                pass
        from fpt.attribution import check_gallery
        from fpt.report import gallery_check_messages, warn

        chk = check_gallery(g)
        rates, warnings = gallery_check_messages(chk)
        if json_out:
            print_json({"identification": cal, "verification": vrows, "decision": chk, "warnings": warnings})
            return
        if rates:
            console.print("identify / verify decide on the likelihood ratio; " + rates, markup=False)
        for w in warnings:
            warn(w)
        print_table("raw-cosine identification threshold (stored in the gallery; used with no LR calibration)",
                    ["FAR asked", "threshold", "expected FAR", "expected FRR", "LOO top-1 acc", "genuine", "impostor"],
                    [[cal.far, f"{cal.threshold:.{_digits(cal.threshold)}f}", cal.expected_far, cal.expected_frr, cal.loo_accuracy,
                      cal.n_genuine, cal.n_impostor]])
        if vrows:
            print_table("verification thresholds (computed on the fly by `fpt verify`)",
                        ["N_S", "threshold", "expected FAR", "expected FRR"],
                        [[v.n_s, f"{v.threshold:.{_digits(v.threshold)}f}", v.expected_far, v.expected_frr]
                         for v in vrows])
        console.print("expected rates are measured on the gallery's own images (leave-one-out); "
                      "enroll more images per model for tighter estimates")

    # ------------------------------------------------------------ identify
    @app.command("identify")
    def identify_cmd(
        paths: list[Path] = typer.Argument(..., help="Images and/or folders to attribute."),
        gallery: Optional[Path] = typer.Option(None, "--gallery", "-g", help=_GALLERY_HELP),
        top_k: int = typer.Option(3, "--top-k", "-k", min=1, help="How many candidate models to list."),
        threshold: Optional[float] = typer.Option(None, "--threshold", help="Decide on the raw cosine with this "
                                                  "threshold instead of the likelihood ratio."),
        min_lr: float = typer.Option(DEFAULT_MIN_LOG10_LR, "--min-lr", help=_MIN_LR_HELP),
        lr_from: str = typer.Option("gallery", "--lr-from", help=_LR_FROM_HELP),
        cohort: Optional[Path] = typer.Option(None, "--cohort", help=_COHORT_HELP),
        extractor: Optional[Path] = typer.Option(None, "--extractor", help=_EXTRACTOR_HELP),
        device: str = typer.Option("auto", "--device", help=_DEVICE_HELP),
        windows: Optional[int] = typer.Option(None, "--windows", min=1, help=_WINDOWS_HELP),
        batch_size: int = typer.Option(64, "--batch-size", min=1, help=_BATCH_HELP),
        json_out: bool = typer.Option(False, "--json", help="JSON to stdout."),
        csv_out: bool = typer.Option(False, "--csv", help="CSV to stdout."),
        jsonl: Optional[Path] = typer.Option(None, "--jsonl", help=_JSONL_HELP),
        csv_file: Optional[Path] = typer.Option(None, "--csv-file", help=_CSV_FILE_HELP),
        resume: bool = typer.Option(False, "--resume", help=_RESUME_HELP),
        workers: int = typer.Option(0, "--workers", min=0, help=_WORKERS_HELP),
        flush_every: int = typer.Option(256, "--flush-every", min=1, help=_FLUSH_HELP),
        shard: Optional[str] = typer.Option(None, "--shard", help=_SHARD_HELP),
    ) -> None:
        """Which enrolled model made each image, or unknown (exit 10 if any unknown).

        Each image gets its best model's raw cosine, cohort-normalised score (when the extractor
        has a cohort), calibrated log10 likelihood ratio and the ENFSI verbal scale; it is
        attributed when the log10 LR reaches --min-lr (docs/calibration.md).
        """
        import numpy as np

        from fpt.attribution import failure_record, identification_record, identify_embeddings
        from fpt.gallery import load_gallery
        from fpt.images import find_images
        from fpt.report import console, format_lr, print_json, visible, warn

        if json_out and csv_out:
            from fpt.errors import ConfigError

            raise ConfigError("--json and --csv are exclusive")
        to_file = _check_scan_options(jsonl, csv_file, resume, workers, shard, csv_out)
        g = load_gallery(_gallery_path(gallery))
        if not g.models:
            from fpt.errors import InputError

            raise InputError("the gallery has no models", path=g.path, hint="fpt enroll MODEL IMAGES...")
        files = find_images(paths)
        ex = load_extractor(extractor, _scan_device(device))
        g.check_extractor(ex.sha256)
        coh = _cohort_for(ex, cohort, lr_from)
        quiet = json_out or csv_out
        if to_file:
            code = _scan_to_file("identify", files, ex, jsonl=jsonl, csv_file=csv_file, resume=resume,
                                 workers=workers, flush_every=flush_every, shard=shard, json_out=json_out,
                                 windows=windows, batch_size=batch_size, gallery=g, top_k=top_k, threshold=threshold,
                                 decision=dict(cohort=coh, min_log10_lr=min_lr, lr_from=lr_from))
            if code:
                raise typer.Exit(code)
            return
        ok, failed = _embed_paths(ex, files, windows=windows, batch_size=batch_size, quiet=quiet, description="identifying")
        _report_failures(failed)
        _require_readable(ok, failed)
        results = identify_embeddings(g, np.stack([r.embedding for r in ok]), top_k=top_k, threshold=threshold,
                                      paths=[str(r.path) for r in ok],
                                      low_confidence=np.array([r.low_confidence for r in ok]),
                                      cohort=coh, min_log10_lr=min_lr, lr_from=lr_from)
        n_unknown = sum(not r.identified for r in results)
        by_lr = results[0].min_log10_lr is not None
        t_used = results[0].threshold
        if by_lr:
            src = f"log10 LR >= {min_lr:g} ({lr_from}-calibrated LR)"
        else:
            src = "--threshold" if threshold is not None else ("calibrated" if g.calibration else "none")
            if threshold is None and g.calibration is None:
                warn("no likelihood-ratio calibration and no gallery threshold (needs 2+ models with 2+ images): "
                     "no image can come back unknown; pass --threshold or enroll more models")
        if json_out:
            print_json({"gallery": str(g.path), "decision": src, "min_log10_lr": min_lr if by_lr else None,
                        "lr_from": lr_from, "threshold": t_used,
                        "threshold_source": src, "cohort": str(coh.path) if coh is not None else None,
                        "results": [identification_record(r) for r in results],
                        "failed": [failure_record(f.path, f.reason) for f in failed],
                        "summary": {"images": len(results), "identified": len(results) - n_unknown,
                                    "unknown": n_unknown, "failed": len(failed)}})
        elif csv_out:
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(["path", "model", "score", "score_norm", "log10_lr", "verbal", "best_model", "low_confidence",
                        "threshold"] + [f"top{i + 1}_{c}" for i in range(top_k) for c in ("model", "score")])

            def num(v) -> str:
                return "" if v is None else f"{v:.6f}"

            for r in results:
                tops = [x for m, s in r.top for x in (m, f"{s:.6f}")]
                w.writerow([r.path, r.model, f"{r.score:.6f}", num(r.score_norm), num(r.log10_lr), r.verbal or "",
                            r.best_model, int(r.low_confidence), num(t_used)] + tops)
            for f in failed:
                w.writerow([str(f.path), "error", "", "", "", "", "", "", ""])
            sys.stdout.write(buf.getvalue())
        else:
            nd = _digits(t_used, *(r.score for r in results))
            from rich.table import Table
            from rich.text import Text

            from fpt.calibration import verbal_level

            table = Table(title=f"identification against {g.path.name} ({len(g.models)} models)",
                          caption=(f"decision: {src}" if by_lr else
                                   (f"threshold {t_used:.{nd}f} ({src})" if t_used is not None else "no threshold")))
            any_low = any(r.low_confidence for r in results)
            table.add_column("image", overflow="fold")
            table.add_column("model", overflow="fold")
            table.add_column("log10 LR", justify="right", no_wrap=True)
            table.add_column("support (ENFSI)", overflow="fold")
            table.add_column("cosine", justify="right", no_wrap=True)
            table.add_column(f"top-{min(top_k, len(g.models))} (cosine)", no_wrap=True)
            if any_low:
                table.add_column("low-conf")
            for r in results:
                tops = "\n".join(f"{visible(m)} {s:.{nd}f}" for m, s in r.top)
                decided = visible(r.model) if r.identified else Text("unknown", style="red")
                cells = [visible(str(r.path)), decided, format_lr(r.log10_lr),
                         "-" if r.log10_lr is None else verbal_level(r.log10_lr),
                         f"{r.score:.{nd}f}", tops] + (["yes" if r.low_confidence else ""] if any_low else [])
                table.add_row(*cells)
            console.print(table)
            if len(results) > 1 or failed:
                from collections import Counter

                cnt = Counter(r.model for r in results)
                console.print(f"{len(results)} image(s): " + ", ".join(f"{m} {n}" for m, n in cnt.most_common())
                              + (f"; {len(failed)} unreadable" if failed else ""), markup=False)
            if by_lr:
                console.print("LR = how many times more probable the image's fingerprint is if the named model made "
                              "it than if another model did; support words from the ENFSI verbal scale "
                              "(docs/calibration.md)", markup=False)
        if n_unknown:
            raise typer.Exit(EXIT_UNKNOWN)
        if failed:
            raise typer.Exit(EXIT_SOME_FAILED)

    # ------------------------------------------------------------ verify
    @app.command("verify")
    def verify_cmd(
        a: Path = typer.Argument(..., help="Side A: an image or folder (N_S images are averaged)."),
        b: Path = typer.Argument(..., help="Side B: an image or folder."),
        threshold: Optional[float] = typer.Option(None, "--threshold", help="Decide on the raw cosine with this "
                                                  "threshold instead of the likelihood ratio."),
        far: float = typer.Option(0.05, "--far", hidden=True, callback=OPEN_UNIT, help="Ignored since decisions use the likelihood "
                                  "ratio (--min-lr); kept so existing scripts still run."),
        min_lr: float = typer.Option(DEFAULT_MIN_LOG10_LR, "--min-lr", help=_MIN_LR_HELP),
        lr_from: str = typer.Option("gallery", "--lr-from", help=_LR_FROM_HELP),
        cohort: Optional[Path] = typer.Option(None, "--cohort", help=_COHORT_HELP),
        gallery: Optional[Path] = typer.Option(None, "--gallery", "-g", help=_GALLERY_HELP),
        extractor: Optional[Path] = typer.Option(None, "--extractor", help=_EXTRACTOR_HELP),
        device: str = typer.Option("auto", "--device", help=_DEVICE_HELP),
        windows: Optional[int] = typer.Option(None, "--windows", min=1, help=_WINDOWS_HELP),
        batch_size: int = typer.Option(64, "--batch-size", min=1, help=_BATCH_HELP),
        json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    ) -> None:
        """Were A and B made by the same model? Exit 0 same, 10 different.

        Reports the raw cosine, the cohort-normalised score, the calibrated log10 likelihood ratio
        and its ENFSI verbal scale; "same model" when the log10 LR reaches --min-lr.
        """
        import numpy as np

        from fpt.attribution import verify_embeddings, verify_lr_calibration
        from fpt.errors import EmptyInputError
        from fpt.gallery import load_gallery
        from fpt.images import find_images
        from fpt.report import console, format_lr, print_json

        fa, fb = find_images(a), find_images(b)
        ex = load_extractor(extractor, device)
        coh = _cohort_for(ex, cohort, lr_from)
        oka, faila = _embed_paths(ex, fa, windows=windows, batch_size=batch_size, quiet=json_out, description="side A")
        okb, failb = _embed_paths(ex, fb, windows=windows, batch_size=batch_size, quiet=json_out, description="side B")
        _report_failures(faila + failb)
        if not oka or not okb:
            raise EmptyInputError("no readable images on side " + ("A" if not oka else "B"))
        n_s = min(len(oka), len(okb))
        src, gcal = "--threshold", None
        if lr_from == "gallery":
            gp = _gallery_path(gallery)
            if threshold is None or gp.exists():  # a missing gallery is an error only when it must decide
                from fpt.errors import InputError

                g = load_gallery(gp)
                g.check_extractor(ex.sha256)
                try:
                    gcal, n_eff = verify_lr_calibration(g, n_s)
                except InputError:
                    if threshold is None:
                        raise
                else:
                    if threshold is None:
                        src = f"log10 LR >= {min_lr:g} (LR calibrated on {g.path.name}, N_S={n_eff})"
        elif threshold is None:
            src = f"log10 LR >= {min_lr:g} (LR calibrated on the cohort)"
        low = any(r.low_confidence for r in oka + okb)
        v = verify_embeddings(np.stack([r.embedding for r in oka]), np.stack([r.embedding for r in okb]), threshold, src, low,
                              cohort=coh, min_log10_lr=min_lr, lr_from=lr_from, gallery_calibration=gcal)
        if json_out:
            print_json(v)
        else:
            verdict = "[green]same model[/green]" if v.same_model else "[red]different models[/red]"
            nd = _digits(v.similarity, v.threshold)
            console.print(f"log10 LR {format_lr(v.log10_lr)}: {v.verbal or 'no LR calibration'} -> {verdict}",
                          markup=True)
            norm = "" if v.score_norm is None else f", normalised {v.score_norm:.3f}"
            console.print(f"cosine {v.similarity:.{nd}f}{norm} (A: {v.n_a} image(s), B: {v.n_b} image(s))")
            console.print(f"decision: {v.threshold_source}" + (f" (threshold {v.threshold:.{nd}f})" if v.threshold is not None else ""),
                          markup=False)
            if low:
                console.print("[yellow]low confidence: some images were smaller than the extractor's window[/yellow]",
                              markup=True)
        if not v.same_model:
            raise typer.Exit(EXIT_UNKNOWN)

    # ------------------------------------------------------------ lineage
    @app.command("lineage")
    def lineage_cmd(
        gallery: Optional[Path] = typer.Option(None, "--gallery", "-g", help=_GALLERY_HELP),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Dendrogram PNG (default: lineage.png)."),
        models: Optional[list[str]] = typer.Option(None, "--model", "-m", help="Only these models (repeatable)."),
        scores: str = typer.Option("raw", "--scores", help="raw (cosine distance) or snorm (cohort-normalised "
                                   "similarity, needs the extractor's cohort or --cohort)."),
        cohort: Optional[Path] = typer.Option(None, "--cohort", help=_COHORT_HELP),
        json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
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

    # ------------------------------------------------------------ eval
    @app.command("eval")
    def eval_cmd(
        root: Path = typer.Argument(..., help="ROOT/<model>/* labelled folders (cnndetection <gen>/fake = model <gen>)."),
        methods: str = typer.Option("fpt,prnu,spectrum", "--methods",
                                    help="Comma-separated: fpt, prnu, spectrum, artifact-rgb, artifact-freq, "
                                         "artifact-feat, artifact-rgb-fpt (artifact-* need --manifold or --real)."),
        extractor: Optional[Path] = typer.Option(None, "--extractor", help=_EXTRACTOR_HELP),
        device: str = typer.Option("auto", "--device", help=_DEVICE_HELP),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for ROC / histogram PNGs and eval.json "
                                           "(default: none written)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the random splits and pairs."),
        pairs: int = typer.Option(2000, "--pairs", min=1, help="Test pairs per N_S (balanced)."),
        repeats: int = typer.Option(5, "--repeats", min=1, help="Random gallery / unknown draws averaged."),
        k_shot: int = typer.Option(10, "--k-shot", min=1, help="Images per model in the identification gallery."),
        unknown_fraction: float = typer.Option(0.3, "--unknown-fraction", callback=HALF_OPEN_UNIT,
                                               help="Share of models held out as unknown, in [0, 1)."),
        far: float = typer.Option(0.05, "--far", callback=OPEN_UNIT, help="FAR for the open-set threshold (gallery calibration), in (0, 1)."),
        windows: Optional[int] = typer.Option(None, "--windows", min=1, help="fpt: n x n windows (default: the checkpoint's)."),
        manifold: Optional[Path] = typer.Option(None, "--manifold", help="Real-image manifold for artifact-* methods "
                                                "(fpt manifold build)."),
        real: Optional[Path] = typer.Option(None, "--real", help="Real images for an ad-hoc manifold (artifact-* methods)."),
        figures: bool = typer.Option(True, "--figures/--no-figures", help="Write ROC and histogram PNGs."),
        group: Optional[list[str]] = typer.Option(None, "--group", help="Extra group NAME=model,model,... evaluated "
                                                  "on its own too (e.g. a text-to-image subset); repeatable."),
        cohort: Optional[Path] = typer.Option(None, "--cohort", help=_COHORT_HELP),
        min_lr: float = typer.Option(DEFAULT_MIN_LOG10_LR, "--min-lr", help=_MIN_LR_HELP),
        json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    ) -> None:
        """Verification, identification, open-set, calibration (Cllr) and clustering metrics for several
        methods, same splits; plus the open-set sweep over gallery size x shots."""
        from fpt.evaluation import evaluate, per_model_rows, plot_group, summary_table, to_json
        from fpt.report import console, dumps_json, print_json, print_table, progress, warn
        from fpt.storage import atomic_path

        mlist = [m.strip() for m in methods.split(",") if m.strip()]
        extra: dict[str, list[str]] = {}
        for spec in group or []:
            name, sep, members = spec.partition("=")
            models_ = [m.strip() for m in members.split(",") if m.strip()]
            if not sep or not name.strip() or len(models_) < 2:
                from fpt.errors import ConfigError

                raise ConfigError(f"--group '{spec}' is not NAME=model,model,... with 2+ models")
            extra[name.strip()] = models_
        with progress(transient=True, disable=json_out) as prog:
            def make(desc: str, total: int):
                task = prog.add_task(desc, total=total)
                return lambda n: prog.advance(task, n)

            res = evaluate(root, mlist, seed=seed, n_pairs=pairs, k_shot=k_shot, repeats=repeats,
                           unknown_fraction=unknown_fraction, far=far,
                           representation_kwargs={"extractor": extractor, "device": device, "windows": windows,
                                                  **({"manifold": manifold} if manifold else {}),
                                                  **({"real_images": real} if real else {})},
                           progress=make, extra_groups=extra, cohort=cohort, min_log10_lr=min_lr)
        out.mkdir(parents=True, exist_ok=True)
        pngs = []
        data = to_json(res)
        if out is not None:  # files only where the user asked for them
            out.mkdir(parents=True, exist_ok=True)
            for g in res.groups:
                if g.methods and figures:
                    pngs += plot_group(g, out)
            data["figures"] = [str(p) for p in pngs]
            with atomic_path(out / "eval.json") as tmp:
                tmp.write_text(dumps_json(data))
        if json_out:
            print_json(data)
            return
        for p, e in res.failures:
            warn(f"skipped {e}")
        for g in res.groups:
            title = f"{g.group}: {len(g.models)} models, {sum(g.counts.values())} images"
            if not g.methods:
                console.print(f"{title} — " + "; ".join(g.notes))
                continue
            cols, rows = summary_table(g, k_shot=res.settings["k_shot"])
            print_table(title, cols, rows,
                        caption="cal. thr. = threshold chosen on a separate calibration split; "
                                "oracle = best threshold on the test pairs (papers' number)")
            cols, rows = per_model_rows(g)
            print_table(f"{g.group}: {res.settings['k_shot']}-shot identification accuracy per model", cols, rows)
            from fpt.eval_decisions import cllr_rows, decision_rows

            for m, r in g.methods.items():
                if r.decisions is None:
                    continue
                cols, rows = cllr_rows(r.decisions)
                if rows:
                    print_table(f"{g.group}: {m} verification calibration (test pairs)", cols, rows,
                                caption="gallery = logistic on raw cosine fitted on the calibration split; "
                                        "cohort = adaptive S-norm + the cohort's calibration")
                cols, rows = decision_rows(r.decisions)
                if rows:
                    print_table(f"{g.group}: {m} open-set sweep ({res.settings['repeats']} draws each)", cols, rows,
                                caption=f"FRR = known probes not accepted with the right model; LR level "
                                        f"log10 LR >= {res.settings['min_log10_lr']:g}")
                for n in r.decisions.notes:
                    console.print(f"  note ({m}): {n}", markup=False)
            for n in g.notes:
                console.print(f"  note: {n}")
        if out is not None:
            console.print(f"figures and eval.json in {out}/")
