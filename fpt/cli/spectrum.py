"""``fpt spectrum`` (spectral evidence for images and folders) and ``fpt demo upsample``.

Rendering only: the analysis lives in :mod:`fpt.spectrum.analysis`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fpt.cli.options import DEVICE_HELP, JsonOpt

#: Above this many images, per-image figures / .npz are written only with --per-image.
PER_IMAGE_AUTO_LIMIT = 50


def _peaks_text(peaks, top: int = 3) -> str:
    if not peaks:
        return "-"
    shown = " ".join(f"{p.label.replace(' ', '')}×{p.strength:.0f}" for p in peaks[:top])
    return shown + (f" +{len(peaks) - top}" if len(peaks) > top else "")


def spectrum_cmd(
    paths: list[Path] = typer.Argument(..., help="Image files and/or folders (walked recursively)."),
    residual: str = typer.Option(
        "highpass", "--residual", "-r", help="Residual extractor: highpass, denoiser, or none (raw pixels)."
    ),
    grey: bool = typer.Option(False, "--grey", help="Analyse the luma of the residual instead of each channel."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write PNG figures, .npz arrays and summary.json here."),
    per_image: Optional[bool] = typer.Option(
        None,
        "--per-image/--no-per-image",
        help=f"Per-image figure + .npz under --out (default: only for <= {PER_IMAGE_AUTO_LIMIT} images).",
    ),
    crop: Optional[int] = typer.Option(
        None, "--crop", help="Common centre-crop side for the mean spectrum (default: first image's shorter side, max 512)."
    ),
    threshold: float = typer.Option(10.0, "--threshold", help="Grid-peak strength threshold (peak / local median)."),
    periodic: bool = typer.Option(
        False, "--periodic", help="Remove the border cross first (periodic + smooth decomposition, Moisan 2011)."
    ),
    limit: Optional[int] = typer.Option(None, "--limit", help="Analyse only the first N images (sorted) of each input."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    as_json: JsonOpt = False,
) -> None:
    """Spectral evidence: residual energy, high-pass ratio, azimuthal integral, grid peaks.

    The HP ratio is Eq. 13 of Yang et al., 'Fingerprints of Generative Models in the Frequency Domain'.

    One row per image, then one summary row per input (file or folder) from the mean spectrum
    over that input's images: pass one folder per generator to compare them. Peaks are
    reported as fractions of the sampling rate (fy, fx) with their strength over the local
    background: 1/2, 1/4, 1/8 point to 1, 2, 3 upsampling layers (or an 8x8 JPEG grid).
    """
    from fpt.report import err_console, print_json, progress
    from fpt.spectrum import analysis as A

    groups = A.input_groups(paths, limit)
    total = sum(len(f) for _, f in groups)
    with progress(disable=total < 2) as bar:
        task = bar.add_task("spectra", total=total)
        run = A.analyse_groups(groups, residual=residual, grey=grey, crop=crop, peak_threshold=threshold,
                               periodic=periodic, device=device, on_progress=lambda _p: bar.advance(task))
    _warn_failures(run)
    if out is not None:
        A.write_outputs(run, out, per_image=per_image if per_image is not None else total <= PER_IMAGE_AUTO_LIMIT)
        err_console.print(f"wrote figures and arrays to {out}")
    if as_json:
        print_json(run.summary())
    else:
        _print_spectrum_tables(run)


def _warn_failures(run) -> None:
    """Unreadable files as warnings, padded means as warnings; nothing readable is an error."""
    from fpt.errors import ImageError
    from fpt.report import warn

    images, failures = run.images, run.failures
    if not images and len(failures) == 1:
        raise ImageError(failures[0].reason)  # said once, as the error, not also as a warning
    for f in failures:
        warn(f"skipped {f.reason}")
    if not images:
        raise ImageError(f"none of the {len(failures)} images could be read", hint=f"first failure: {failures[0].reason}")
    for p, g in run.groups:
        if g.n_padded:
            warn(f"{p}: {g.n_padded} image(s) smaller than the {g.crop}px crop were mirror-padded into the mean spectrum")


def _print_spectrum_tables(run) -> None:
    from fpt.report import console, print_table
    from fpt.spectrum.analysis import display_name

    images, root = run.images, run.root
    print_table(
        f"Residual spectra ({run.residual}{', grey' if run.grey else ', per channel'})",
        ["image", "size", "energy", "HP ratio", "AI mean", "AI max", "grid peaks (fy,fx)×strength"],
        [[display_name(r.path, root), f"{r.width}x{r.height}", r.residual_energy, r.hp_ratio, r.ai_mean, r.ai_max,
          _peaks_text(r.peaks)] for r in images],
    )
    if len(images) > 1:
        print_table(
            "Summary per input (mean spectrum over each input's images, centre-cropped)",
            ["input", "images", "failed", "HP ratio ± sd", "HP of mean", "crop", "grid peaks of mean spectrum"],
            [[p.name or str(p), len(g.images), len(g.failures),
              f"{g.hp_ratio_mean:.3f} ± {g.hp_ratio_std:.3f}" if g.images else "-",
              g.mean_hp_ratio if g.images else None, g.crop if g.images else None,
              _peaks_text(g.mean_peaks, top=5) if g.images else "-"] for p, g in run.groups],
        )
    elif run.failures:
        console.print(f"{len(run.failures)} file(s) skipped")


def demo_upsample_cmd(
    image: Optional[Path] = typer.Argument(None, help="Image to use (grey centre crop); default uniform noise."),
    size: int = typer.Option(64, "--size", help="Side of the signal before 2x upsampling."),
    seed: int = typer.Option(0, "--seed", help="Seed for the noise and the random deconvolution kernel."),
    threshold: float = typer.Option(10.0, "--threshold", help="Grid-peak strength threshold."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write upsample_demo.png here."),
    as_json: JsonOpt = False,
) -> None:
    """Why upsampling leaves grids: zero-interleave, then nearest / bilinear / deconv.

    After Fig. 3 of Yang et al., 'Fingerprints of Generative Models in the Frequency Domain'.

    Prints the HP ratio (Eq. 13) and the detected grid peaks after each step: interleaving
    replicates the spectrum 2x2 (peaks at 1/2); nearest and bilinear kernels remove the peaks
    and lower the HP ratio; a random deconvolution kernel keeps them.
    """
    from fpt.images import load_image
    from fpt.report import console, err_console, print_json, print_table, save_figure
    from fpt.spectrum import demo as D

    img = load_image(image) if image is not None else None
    demo = D.upsample_demo(img, size=size, seed=seed, threshold=threshold)
    if out is not None:
        path = save_figure(D.upsample_demo_figure(demo), out / "upsample_demo.png", tight=False)
        err_console.print(f"wrote {path}")
    if as_json:
        print_json({"source": demo.source, "replication_error": demo.replication_error, "steps": demo.steps})
        return
    print_table(
        f"Upsampling demo: {demo.source}",
        ["step", "size", "HP ratio", "grid peaks (fy,fx)×strength"],
        [[s.name, f"{s.size}x{s.size}", s.hp_ratio, _peaks_text(s.peaks)] for s in demo.steps],
    )
    console.print(
        f"2x2 replication after zero-interleaving: max |F(u+M, v+N) - F(u, v)| / max |F| = {demo.replication_error:.1e}"
    )


def register(app: typer.Typer) -> None:
    """Add this module's commands to app."""
    app.command("spectrum")(spectrum_cmd)
    demo = typer.Typer(help="Demonstrations of the papers' spectral arguments.", no_args_is_help=True)
    app.add_typer(demo, name="demo")
    demo.command("upsample")(demo_upsample_cmd)
