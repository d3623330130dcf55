"""Spectral analysis of images and folders (logic behind ``fpt spectrum``).

Everything here returns dataclasses; ``fpt/cli/spectrum.py`` only renders them. Per image:
residual -> power spectrum (per channel, or grey) -> azimuthal integral (paper 000 Eq. 12), HP
ratio (Eq. 13), grid peaks, autocorrelation. Per folder: the same for every image plus the mean
spectrum over all of them (centre-cropped to a common size, see :class:`fpt.spectrum.core.MeanSpectrum`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fpt.errors import ConfigError
from fpt.spectrum import core as S
from fpt.images import LoadFailure, find_images, iter_images

#: Autocorrelation lags kept for figures / .npz (+- this many pixels around lag 0).
ACF_LAGS = 32


@dataclass
class SpectrumArrays:
    """Arrays behind one analysis (numpy, ready for .npz). Spectra are fftshifted (DC centred)."""

    power: np.ndarray  # (C, H, W) power spectrum of the residual, fftshifted
    ai: np.ndarray  # (M/2,) azimuthal integral (Eq. 12) of the channel-mean power
    ai_freq: np.ndarray  # (M/2,) ring radius in cycles/pixel (k / M)
    autocorr: np.ndarray  # (2L+1, 2L+1) channel-mean autocorrelation around lag 0
    radial: np.ndarray  # (R,) radial profile (corners included)
    radial_freq: np.ndarray
    angular: np.ndarray  # (36,) mean power per orientation, degrees [0, 180)
    angles: np.ndarray


@dataclass
class ImageSpectrum:
    """Summary numbers of one image's residual spectrum."""

    path: Path
    width: int
    height: int
    residual_energy: float  # mean squared residual per pixel and channel (its variance)
    hp_ratio: float  # paper 000 Eq. 13 on the channel-mean power
    ai_mean: float
    ai_max: float
    peaks: list[S.GridPeak]
    arrays: SpectrumArrays | None = field(default=None, repr=False)


@dataclass
class FolderSpectrum:
    """Per-image results, failures, and the mean spectrum over every readable image."""

    images: list[ImageSpectrum]
    failures: list[LoadFailure]
    crop: int  # common centre-crop side of the mean spectrum
    n_padded: int  # images smaller than ``crop`` (mirror-padded into the mean)
    hp_ratio_mean: float  # mean of the per-image HP ratios
    hp_ratio_std: float
    mean_hp_ratio: float  # HP ratio of the mean spectrum
    mean_ai_mean: float
    mean_ai_max: float
    mean_peaks: list[S.GridPeak]
    mean_arrays: SpectrumArrays | None = field(default=None, repr=False)


def _arrays(power: torch.Tensor, acf: torch.Tensor) -> SpectrumArrays:
    """Build the display arrays from a (C, H, W) unshifted power spectrum and its ACF."""
    pm = power.mean(0)
    m = min(pm.shape)
    ai = S.azimuthal_integral(pm)
    rf, rv = S.radial_spectrum(pm)
    af, av = S.angular_spectrum(pm)
    acf_c = S.fftshift(acf.mean(0))
    h, w = acf_c.shape
    lag = min(ACF_LAGS, (h - 1) // 2, (w - 1) // 2)  # +-lag must be distinct bins
    acf_c = acf_c[h // 2 - lag : h // 2 + lag + 1, w // 2 - lag : w // 2 + lag + 1]
    to_np = lambda t: t.detach().float().cpu().numpy()  # noqa: E731
    return SpectrumArrays(
        power=to_np(S.fftshift(power)),
        ai=to_np(ai),
        ai_freq=np.arange(ai.shape[-1], dtype=np.float32) / m,
        autocorr=to_np(acf_c),
        radial=to_np(rv),
        radial_freq=to_np(rf),
        angular=to_np(av),
        angles=to_np(af),
    )


def analyse_tensor(
    image: torch.Tensor,
    residual: torch.nn.Module | None,
    *,
    grey: bool = False,
    path: Path | str = "<tensor>",
    keep_arrays: bool = False,
    peak_threshold: float = 10.0,
    periodic: bool = False,
) -> tuple[ImageSpectrum, torch.Tensor]:
    """Analyse one (3, H, W) image; returns the summary and the residual (C, H, W) for averaging.

    With ``periodic`` the spectrum is taken of the residual's periodic component (no border
    cross, see :func:`fpt.spectrum.periodic_component`); the returned residual is the plain one.
    """
    x = image.unsqueeze(0) if image.dim() == 3 else image
    with torch.no_grad():
        r = residual(x) if residual is not None else x
        if grey:
            r = S.to_grey(r)
        r = (r - r.mean(dim=(-2, -1), keepdim=True)).float()[0]
        power = S.power_spectrum(S.periodic_component(r) if periodic else r)
        ai = S.azimuthal_integral(power.mean(0))
        peaks = S.find_grid_peaks(power, threshold=peak_threshold)
        arrays = _arrays(power, S.autocorrelation(power, from_power=True)) if keep_arrays else None
    h, w = r.shape[-2:]
    return (
        ImageSpectrum(
            path=Path(path),
            width=int(w),
            height=int(h),
            residual_energy=float(r.square().mean()),
            hp_ratio=float(S.hp_ratio(ai)),
            ai_mean=float(ai.mean()),
            ai_max=float(ai.max()),
            peaks=peaks,
            arrays=arrays,
        ),
        r,
    )


def resolve_residual(name: str, device: torch.device) -> torch.nn.Module | None:
    """``none`` -> analyse pixels; else a registered residual extractor on ``device``."""
    if name == "none":
        return None
    from fpt.residual import build_residual

    return build_residual(name).to(device).eval()


def analyse_paths(
    paths: Sequence[str | Path],
    *,
    residual: str = "highpass",
    grey: bool = False,
    device: torch.device | str = "cpu",
    crop: int | None = None,
    keep_arrays: bool = False,
    peak_threshold: float = 10.0,
    periodic: bool = False,
    on_progress: Callable[[Path], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> FolderSpectrum:
    """Analyse every image under ``paths`` (files and folders, walked recursively).

    Unreadable files are collected in ``failures`` and skipped. The mean spectrum uses a common
    centre crop of ``crop`` px (default: the first image's shorter side, at most 512).
    ``keep_arrays`` keeps per-image arrays (memory grows with the count; the mean's arrays are
    always kept). Raises :class:`fpt.errors.EmptyInputError` when nothing is found.
    """
    device = torch.device(device)
    files = find_images(paths)
    if on_total:
        on_total(len(files))
    res = resolve_residual(residual, device)
    mean = S.MeanSpectrum(crop, periodic=periodic)
    results: list[ImageSpectrum] = []
    failures: list[LoadFailure] = []
    for p, img in iter_images(files):
        if isinstance(img, LoadFailure):
            failures.append(img)
        else:
            if mean.size is None:
                mean.size = min(512, *img.shape[-2:])
            rep, r = analyse_tensor(
                img.to(device),
                res,
                grey=grey,
                path=p,
                keep_arrays=keep_arrays,
                peak_threshold=peak_threshold,
                periodic=periodic,
            )
            results.append(rep)
            mean.update(r)
        if on_progress:
            on_progress(p)
    if not results:
        return FolderSpectrum(results, failures, crop or 0, 0, math.nan, math.nan, math.nan, math.nan, math.nan, [])
    mp = mean.mean
    ai = S.azimuthal_integral(mp.mean(0))
    hps = np.array([r.hp_ratio for r in results])
    return FolderSpectrum(
        images=results,
        failures=failures,
        crop=int(mean.size),
        n_padded=mean.n_padded,
        hp_ratio_mean=float(hps.mean()),
        hp_ratio_std=float(hps.std()),
        mean_hp_ratio=float(S.hp_ratio(ai)),
        mean_ai_mean=float(ai.mean()),
        mean_ai_max=float(ai.max()),
        # The mean of many spectra has far less bin-to-bin scatter, so the same threshold is stricter.
        mean_peaks=S.find_grid_peaks(mp, threshold=peak_threshold),
        mean_arrays=_arrays(mp, S.autocorrelation(mp, from_power=True)),
    )


# ------------------------------------------------------------------ output files


def output_stem(path: Path, root: Path | None) -> str:
    """File-name-safe stem for per-image outputs, unique within one run (relative path joined by __)."""
    try:
        rel = path.resolve().relative_to(root) if root else Path(path.name)
    except ValueError:
        rel = Path(path.name)
    parts = list(rel.with_suffix("").parts) or [path.stem]
    return "__".join(parts)


def display_name(path: Path, root: Path | None) -> str:
    """Path relative to the run's common folder, for tables (``sub/0001.png``)."""
    try:
        return path.resolve().relative_to(root).as_posix() if root else path.name
    except ValueError:
        return path.name


def common_root(paths: Sequence[Path]) -> Path | None:
    try:
        return Path(os.path.commonpath([str(p.resolve().parent) for p in paths]))
    except ValueError:
        return None


def save_npz(arrays: SpectrumArrays, target: Path, **extra: np.ndarray) -> Path:
    """Write the arrays atomically as a compressed .npz (keys = field names + extras)."""
    import dataclasses

    from fpt.storage import atomic_path

    with atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **dataclasses.asdict(arrays), **extra)
    return target


def spectrum_figure(arrays: SpectrumArrays, title: str, peaks: Sequence[S.GridPeak] = ()):
    """Three panels: log power spectrum (DC centred, peaks circled), AI curve, autocorrelation."""
    from fpt.report import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    p = arrays.power.mean(0)
    h, w = p.shape
    ext = (-0.5, 0.5 - 1.0 / w, 0.5 - 1.0 / h, -0.5)
    logp = np.log10(p + 1e-12)
    lo, hi = np.percentile(logp, [1.0, 99.9])  # robust contrast: DC and single hot bins do not set it
    axes[0].imshow(logp, cmap="magma", extent=ext, vmin=lo, vmax=hi)
    for g in peaks[:12]:
        for sy, sx in ((1, 1), (-1, -1)):
            fy, fx = sy * g.fy, sx * g.fx
            fy = -0.5 if fy >= 0.5 - 1e-9 else fy
            fx = -0.5 if fx >= 0.5 - 1e-9 else fx
            axes[0].add_patch(plt.Circle((fx, fy), 0.025, fill=False, color="cyan", lw=1))
    axes[0].set_title("log10 power spectrum of residual")
    axes[0].set_xlabel("fx (cycles/px)")
    axes[0].set_ylabel("fy (cycles/px)")
    # Ring 0 (DC) is removed with the mean; plotting it would stretch the log axis for nothing.
    axes[1].semilogy(arrays.ai_freq[1:], arrays.ai[1:])
    axes[1].axvline(0.25, color="grey", ls="--", lw=0.8)
    axes[1].text(0.26, 0.05, "HP band (Eq. 13)", transform=axes[1].get_xaxis_transform(), fontsize=8, color="grey")
    axes[1].set_title("azimuthal integral (Eq. 12)")
    axes[1].set_xlabel("radius (cycles/px)")
    lag = arrays.autocorr.shape[0] // 2
    acf = arrays.autocorr.copy()
    acf[lag, lag] = np.nan  # lag 0 is 1 by definition and would swamp the colour scale
    vmax = np.nanmax(np.abs(acf)) or 1.0
    axes[2].imshow(acf, cmap="RdBu_r", vmin=-vmax, vmax=vmax, extent=(-lag - 0.5, lag + 0.5, lag + 0.5, -lag - 0.5))
    axes[2].set_title("residual autocorrelation (lag 0 hidden)")
    axes[2].set_xlabel("lag x (px)")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ fpt spectrum: inputs, run, outputs


@dataclass
class SpectrumRun:
    """One ``fpt spectrum`` run: a :class:`FolderSpectrum` per input (file or folder)."""

    groups: list[tuple[Path, FolderSpectrum]]
    residual: str
    grey: bool
    periodic: bool
    peak_threshold: float
    device: torch.device

    @property
    def images(self) -> list[ImageSpectrum]:
        return [r for _, g in self.groups for r in g.images]

    @property
    def failures(self) -> list[LoadFailure]:
        return [f for _, g in self.groups for f in g.failures]

    @property
    def root(self) -> Path | None:
        """The images' common folder: output names and table rows are relative to it."""
        return common_root([r.path for r in self.images])

    def summary(self) -> dict:
        """The run as JSON-ready values (``--json`` and ``summary.json``); per-image arrays left out."""
        from fpt.report import to_jsonable

        def group(p: Path, g: FolderSpectrum) -> dict:
            return {"input": p, "images": len(g.images), "failed": len(g.failures),
                    "crop": g.crop if g.images else None,
                    "hp_ratio_mean": g.hp_ratio_mean, "hp_ratio_std": g.hp_ratio_std,
                    "mean_spectrum": {"hp_ratio": g.mean_hp_ratio, "ai_mean": g.mean_ai_mean,
                                      "ai_max": g.mean_ai_max, "peaks": g.mean_peaks}}

        images = [{k: v for k, v in to_jsonable(r).items() if k != "arrays"} for r in self.images]
        return {
            "summary": {"residual": self.residual, "grey": self.grey, "periodic": self.periodic,
                        "images": len(images), "failed": len(self.failures)},
            "groups": [group(p, g) for p, g in self.groups],
            "images": images,
            "failures": [{"path": f.path, "reason": f.reason} for f in self.failures],
        }


def input_groups(paths: Sequence[Path], limit: int | None = None) -> list[tuple[Path, list[Path]]]:
    """One group per path argument (each folder, e.g. one generator, gets its own mean spectrum),
    with at most the first ``limit`` images (sorted) of each."""
    if limit is not None and limit < 1:
        raise ConfigError("--limit must be at least 1")
    groups = []
    for p in paths:
        files = find_images([p])
        groups.append((p, files[:limit] if limit is not None else files))
    return groups


def analyse_groups(groups: Sequence[tuple[Path, list[Path]]], *, residual: str = "highpass", grey: bool = False,
                   crop: int | None = None, peak_threshold: float = 10.0, periodic: bool = False,
                   device: torch.device | str = "auto",
                   on_progress: Callable[[Path], None] | None = None) -> SpectrumRun:
    """:func:`analyse_paths` for each group of :func:`input_groups`."""
    from fpt.devices import select_device
    from fpt.residual import RESIDUALS

    if residual != "none" and residual not in RESIDUALS:
        raise ConfigError(f"unknown residual '{residual}'", hint=f"choose one of {', '.join(sorted(RESIDUALS))}, none")
    if crop is not None and crop < 8:
        raise ConfigError(f"--crop {crop} is too small", hint="use 8 or more")
    dev = device if isinstance(device, torch.device) else select_device(device)
    done = [(p, analyse_paths(files, residual=residual, grey=grey, device=dev, crop=crop, peak_threshold=peak_threshold,
                              periodic=periodic, on_progress=on_progress)) for p, files in groups]
    return SpectrumRun(done, residual, grey, periodic, peak_threshold, dev)


def write_outputs(run: SpectrumRun, out: Path, *, per_image: bool) -> None:
    """PNG figures, .npz arrays and ``summary.json`` under ``out``: for each image when
    ``per_image`` (a second pass that keeps arrays, one image at a time: bounded memory), and for
    the mean spectrum of each input (named after the input when there are several)."""
    from fpt.images import load_image
    from fpt.report import dumps_json, save_figure
    from fpt.storage import atomic_path

    out.mkdir(parents=True, exist_ok=True)
    root = run.root
    if per_image:
        res = resolve_residual(run.residual, run.device)
        for rep in run.images:
            one, _ = analyse_tensor(load_image(rep.path).to(run.device), res, grey=run.grey, path=rep.path,
                                    keep_arrays=True, peak_threshold=run.peak_threshold, periodic=run.periodic)
            stem = output_stem(rep.path, root)
            save_npz(one.arrays, out / f"{stem}.npz")
            fig = spectrum_figure(one.arrays, f"{display_name(rep.path, root)} — residual {run.residual}", one.peaks)
            save_figure(fig, out / f"{stem}.png", tight=False)
    named = len(run.groups) > 1
    used: set[str] = set()
    for i, (p, g) in enumerate(run.groups):
        if not g.images or (len(g.images) == 1 and per_image):
            continue
        name = f"mean_spectrum_{output_stem(p, None)}" if named else "mean_spectrum"
        name = f"{name}_{i}" if name in used else name  # two inputs with the same name
        used.add(name)
        title = f"{p.name}: mean of {len(g.images)} residual spectra, {g.crop}px centre crop — {run.residual}"
        save_npz(g.mean_arrays, out / f"{name}.npz")
        save_figure(spectrum_figure(g.mean_arrays, title, g.mean_peaks), out / f"{name}.png", tight=False)
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(dumps_json(run.summary()) + "\n")
