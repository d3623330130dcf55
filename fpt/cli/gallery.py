"""CLI for the gallery store: ``fpt gallery list | show | remove | rename | export | import | calibrate``.

Thin shell over fpt.gallery and fpt.attribution; output through fpt.report.
"""

from __future__ import annotations

from pathlib import Path

import typer

from fpt.cli.attribution import _check_rank, _gallery_path, check_with_status
from fpt.cli.options import HALF_OPEN_UNIT, GalleryOpt, JsonOpt, RankOpt


def _short_date(iso: str) -> str:
    return iso[:16].replace("T", " ") if iso else ""


def gallery_list(gallery: GalleryOpt = None, json_out: JsonOpt = False) -> None:
    """Enrolled models with image counts and dates."""
    from fpt.gallery import load_gallery
    from fpt.report import print_json, print_table, score_digits

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
           + (f"{cal.threshold:.{score_digits(cal.threshold)}f} at FAR {cal.far:g}" if cal else "not calibrated"))
    print_table(f"gallery {g.path}", ["model", "images", "low-conf", "created", "updated", "meta"], rows,
                caption=cap)


def gallery_show(model: str = typer.Argument(...), gallery: GalleryOpt = None, json_out: JsonOpt = False) -> None:
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


def gallery_remove(model: str = typer.Argument(...), gallery: GalleryOpt = None) -> None:
    """Remove a model and all its images."""
    from fpt.gallery import edit_gallery, remove_model
    from fpt.report import console

    with edit_gallery(_gallery_path(gallery)) as g:
        remove_model(g, model)
    console.print(f"removed {model}")


def gallery_rename(old: str = typer.Argument(...), new: str = typer.Argument(...), gallery: GalleryOpt = None) -> None:
    """Rename a model."""
    from fpt.gallery import edit_gallery, rename_model
    from fpt.report import console

    with edit_gallery(_gallery_path(gallery)) as g:
        rename_model(g, old, new)
    console.print(f"renamed {old} -> {new}")


def gallery_export(
    out: Path = typer.Argument(..., help="CSV file to write (one row per enrolled image, with its embedding)."),
    gallery: GalleryOpt = None,
) -> None:
    """Export every enrolled image (model, path, sha256, date, metadata, embedding) to CSV."""
    from fpt.gallery import export_csv, load_gallery
    from fpt.report import console

    n = export_csv(load_gallery(_gallery_path(gallery)), out)
    console.print(f"wrote {n} rows to {out}")


def gallery_import(
    src: Path = typer.Argument(..., help="CSV written by `fpt gallery export`."),
    gallery: GalleryOpt = None,
) -> None:
    """Merge a CSV export into the gallery (same extractor only; duplicates skipped)."""
    from fpt.gallery import edit_gallery, import_csv
    from fpt.report import console

    with edit_gallery(_gallery_path(gallery), create=True) as g:
        res = import_csv(g, src)
    for r in res:
        console.print(f"{r.model}: {r.added} added, {r.duplicates} already there, {r.total} in total")


def gallery_calibrate(
    far: float = typer.Option(0.05, "--far", callback=HALF_OPEN_UNIT, help="False-accept rate to allow for unknown images, in [0, 1)."),
    gallery: GalleryOpt = None,
    rank: RankOpt = "whitened",
    json_out: JsonOpt = False,
) -> None:
    """Choose and store the identification threshold from the gallery's own images.

    Leave-one-out: each enrolled image is scored against its own model's fingerprint rebuilt
    without it (genuine) and against the best other model (as if its model were unknown:
    impostor). The threshold lets through at most --far of the impostors.
    """
    from fpt.attribution import verify_threshold
    from fpt.errors import InputError
    from fpt.gallery import calibrate, edit_gallery
    from fpt.report import gallery_check_messages, print_json

    _check_rank(rank)
    with edit_gallery(_gallery_path(gallery)) as g:
        cal = calibrate(g, far)
    vrows = []
    for n_s in (1, 5, 10):
        try:
            v = verify_threshold(g, n_s, far)
        except (InputError, ValueError):  # too few images for sets of n_s: no row
            continue
        if all(r.n_s != v.n_s for r in vrows):  # n_s is capped at what the gallery supplies: one row each
            vrows.append(v)
    chk = check_with_status(g, rank, json_out)
    rates, warnings = gallery_check_messages(chk)
    if json_out:
        print_json({"identification": cal, "verification": vrows, "decision": chk, "warnings": warnings})
        return
    _print_calibration(cal, vrows, rates, warnings)


def _print_calibration(cal, vrows, rates, warnings) -> None:
    from fpt.report import console, print_table, score_digits, warn

    if rates:
        console.print("identify / verify decide on the likelihood ratio; " + rates, markup=False)
    for w in warnings:
        warn(w)
    print_table("raw-cosine identification threshold (stored in the gallery; used with no LR calibration)",
                ["FAR asked", "threshold", "expected FAR", "expected FRR", "LOO top-1 (cosine)", "genuine", "impostor"],
                [[cal.far, f"{cal.threshold:.{score_digits(cal.threshold)}f}", cal.expected_far, cal.expected_frr, cal.loo_accuracy,
                  cal.n_genuine, cal.n_impostor]])
    if vrows:
        print_table("verification thresholds (computed on the fly by `fpt verify`)",
                    ["N_S", "threshold", "expected FAR", "expected FRR"],
                    [[v.n_s, f"{v.threshold:.{score_digits(v.threshold)}f}", v.expected_far, v.expected_frr]
                     for v in vrows])
    console.print("expected rates are measured on the gallery's own images (leave-one-out); "
                  "enroll more images per model for tighter estimates")


def register(app: typer.Typer) -> None:
    """Add ``fpt gallery ...`` to app."""
    gal = typer.Typer(help="Inspect and edit the gallery: list, show, remove, rename, export, import, calibrate.",
                      no_args_is_help=True)
    app.add_typer(gal, name="gallery")
    for fn in (gallery_list, gallery_show, gallery_remove, gallery_rename, gallery_export, gallery_import,
               gallery_calibrate):
        gal.command(fn.__name__.removeprefix("gallery_"))(fn)
