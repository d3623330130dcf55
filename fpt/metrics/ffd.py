"""Fréchet Frequency Distance (FFD), paper 001 §III-C.

Step I, spectrum pattern of a model: take N (default 100) of its images, remove content with a
residual extractor (``fpt.residual``; paper: a denoiser), compute each residual's reduced 1-D
power spectrum by azimuthal integration (``fpt.spectrum.azimuthal_integral``, paper 000 Eq. 12,
i.e. 2*pi * mean ring power), and average over the N images. Following the reduced spectrum
of Durall et al. that the paper cites ([17]), each image's spectrum is taken in log scale and
min-max normalised to [0, 1] before averaging, so brightness/contrast do not dominate.
Spectra are computed on the luma of centre crops of ``size`` px (M/2 = size/2 dimensions).

Step II: FFD(A, B) = Fréchet distance between Gaussians fitted to the two sets of model
representations (``fpt.metrics.frechet``). Lower = synthetic models look more like real ones.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fpt.errors import ConfigError, EmptyInputError
from fpt.images import IMAGE_EXTENSIONS, LoadFailure, center_crop, iter_images
from fpt.metrics.frechet import frechet_distance
from fpt.residual import build_residual
from fpt.spectrum import azimuthal_integral_fast, to_grey

DEFAULT_N = 100
DEFAULT_SIZE = 64


def reduced_spectra(images: torch.Tensor, residual: nn.Module, eps: float = 1e-12) -> torch.Tensor:
    """(N, 3, S, S) images -> (N, S/2) log azimuthal integral of the residual, min-max to [0, 1]."""
    with torch.no_grad():
        r = to_grey(residual(images.float()))[:, 0]
        ai = azimuthal_integral_fast(r).double()
    log_ai = torch.log(ai + eps)
    lo = log_ai.amin(dim=-1, keepdim=True)
    hi = log_ai.amax(dim=-1, keepdim=True)
    return ((log_ai - lo) / (hi - lo).clamp_min(1e-12)).float()


def model_representation(images: torch.Tensor, residual: nn.Module, batch: int = 50) -> np.ndarray:
    """Step I: mean reduced spectrum over a model's images (N, 3, S, S) -> (S/2,)."""
    if images.shape[0] == 0:
        raise EmptyInputError("no images to compute a spectrum representation from")
    parts = [reduced_spectra(images[i : i + batch], residual) for i in range(0, images.shape[0], batch)]
    return torch.cat(parts).mean(0).numpy().astype(np.float64)


def ffd(a: np.ndarray, b: np.ndarray) -> float:
    """Step II: Fréchet distance between two sets of model representations (rows)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ConfigError(f"FFD needs two (n, d) sets with the same d, got {a.shape} and {b.shape}",
                          hint="compute both sets at the same --size")
    if len(a) < 2 or len(b) < 2:
        raise ConfigError("FFD needs at least 2 models on each side (a covariance)")
    return frechet_distance(a, b)


# ------------------------------------------------------------------------------ real models


@dataclass
class ModelSet:
    """Representations of a set of models: names and a (n_models, d) matrix."""

    names: list[str]
    reps: np.ndarray
    skipped: dict[str, str]


def find_model_folders(root: str | Path, exclude: Sequence[str] = (), min_images: int = 2) -> dict[str, list[Path]]:
    """Every folder under ``root`` that directly holds images is one model, named by its path.

    ``exclude``: fnmatch patterns on those names (e.g. ``*/real`` to drop real-photo folders).
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root} is not a folder", hint="--real expects ROOT/<model>/ folders of generated images")
    found: dict[str, list[Path]] = {}
    for d in sorted([root, *(p for p in root.rglob("*") if p.is_dir())]):
        files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if len(files) < min_images:
            continue
        name = d.relative_to(root).as_posix() if d != root else root.name
        if any(fnmatch.fnmatchcase(name, pat) for pat in exclude):
            continue
        found[name] = files
    if not found:
        raise EmptyInputError(f"no model folders with >= {min_images} images under {root}",
                              hint="expected ROOT/<model>/*.png")
    return found


def folder_model_set(root: str | Path, *, n: int = DEFAULT_N, size: int = DEFAULT_SIZE, residual: str = "highpass",
                     exclude: Sequence[str] = (), min_images: int = 2, allow_small: bool = False,
                     on_model: Callable[[str], None] | None = None) -> ModelSet:
    """Representations of real generators from ``ROOT/<model>/`` folders (first n images each).

    Images smaller than ``size`` would need padding, which adds its own periodic spectrum, so
    such models are skipped (reported in ``skipped``) unless ``allow_small``.
    """
    res = build_residual(residual).eval()
    names, reps, skipped = [], [], {}
    for name, files in find_model_folders(root, exclude, min_images).items():
        crops = []
        small = False
        for _, img in iter_images(files[:n]):
            if isinstance(img, LoadFailure):
                continue
            if min(img.shape[-2:]) < size and not allow_small:
                small = True
                break
            crops.append(center_crop(img, size))
        if on_model:
            on_model(name)
        if small:
            skipped[name] = f"images smaller than {size} px"
            continue
        if len(crops) < min_images:
            skipped[name] = "too few readable images"
            continue
        names.append(name)
        reps.append(model_representation(torch.stack(crops), res))
    if not reps:
        raise EmptyInputError(f"no usable model folders under {root}", hint=f"skipped: {skipped}")
    return ModelSet(names, np.stack(reps), skipped)


def pool_model_set(pool, crops: torch.Tensor, *, model_ids: Sequence[str] | None = None, residual: str = "highpass",
                   seed: int = 0, device: str | torch.device = "cpu",
                   on_model: Callable[[str], None] | None = None) -> ModelSet:
    """Representations of pooled synthetic models, each applied to the same real ``crops``."""
    from fpt.synth.nets import fingerprint

    res = build_residual(residual).eval()
    ids = list(model_ids if model_ids is not None else pool.model_ids)
    reps = []
    for mid in ids:
        g = torch.Generator().manual_seed(seed)
        out = fingerprint(pool.load(mid, device), pool.spec(mid), crops.to(device),
                          g if torch.device(device).type == "cpu" else None).cpu()
        reps.append(model_representation(out, res))
        if on_model:
            on_model(mid)
    return ModelSet(ids, np.stack(reps) if reps else np.zeros((0, crops.shape[-1] // 2)), {})


def ablation_subsets(model_ids: Sequence[str]) -> dict[str, list[str]]:
    """Paper 001 Table II sub-spaces of a pool's FD models ("All", "w/o K" ... "w/o seed")."""
    from fpt.synth.space import ABLATIONS, parse_arch_id

    # FD models only: grid generators and latent decoders (extension) have no paper factors
    fd = [m for m in model_ids if parse_arch_id(m).family == "fd"]
    subsets = {"All": fd}
    for name, pred in ABLATIONS.items():
        subsets[name] = [m for m in fd if pred(parse_arch_id(m))]
    first_seed: dict[str, str] = {}
    for m in sorted(fd):
        first_seed.setdefault(m.split("/")[0], m)
    subsets["w/o seed"] = sorted(first_seed.values())
    return subsets


def pool_ffd_sets(model_ids: Sequence[str], *, ablation: bool = False) -> dict[str, list[str]]:
    """The synthetic sets whose FFD ``fpt synth ffd`` reports: the paper's FD models ("All", or
    Table II's sub-spaces with ``ablation``), then latent decoders, grid generators and FD + grid
    when the pool holds them."""
    from fpt.synth.space import parse_arch_id

    family = {m: parse_arch_id(m).family for m in model_ids}
    fd_ids = [m for m in model_ids if family[m] == "fd"]
    ld_ids = [m for m in model_ids if family[m] == "ld"]
    grid_ids = [m for m in model_ids if family[m] == "grid"]
    sets = ablation_subsets(model_ids) if ablation else ({"All": fd_ids} if fd_ids else {})
    if ld_ids:
        sets["latent decoders"] = ld_ids
    if grid_ids:
        sets["grid generators"] = grid_ids
        sets["FD + grid"] = list(model_ids)
    return sets


@dataclass
class PoolFFD:
    """``fpt synth ffd``'s result: one FFD per synthetic set, and optionally each real model's
    L2 distance to the mean synthetic (FD) representation."""

    real: ModelSet
    rows: list[dict]
    per_model: list[dict]


def pool_ffd(pool_path: str | Path, real_root: str | Path, images: Sequence[str | Path], *, n: int = DEFAULT_N,
             size: int = DEFAULT_SIZE, residual: str = "highpass", exclude: Sequence[str] = (),
             ablation: bool = False, per_model: bool = False, seed: int = 0, device: str | torch.device = "cpu",
             on_skip: Callable[[str], None] | None = None,
             on_pool: Callable[[int], Callable[[str], None]] | None = None) -> PoolFFD:
    """FFD between a pool's synthetic models (applied to ``n`` crops of ``images``) and the real
    generators in ``real_root``'s model folders. ``on_pool(n_models)`` returns the per-model
    progress callback."""
    from fpt.synth.pool import Pool
    from fpt.synth.train import CropBank

    if not images:
        raise ConfigError("--images is required: real photos to run the synthetic models on",
                          hint="use the same images the pool was trained on")
    real_set = folder_model_set(real_root, n=n, size=size, residual=residual, exclude=exclude)
    bank = CropBank.from_folder(images, size, n_crops=n, seed=seed, on_skip=on_skip)
    with Pool.open(pool_path) as p:
        on_model = on_pool(len(p.model_ids)) if on_pool else None
        syn = pool_model_set(p, bank.crops, residual=residual, seed=seed, device=device, on_model=on_model)
    idx = {m: i for i, m in enumerate(syn.names)}
    sets = pool_ffd_sets(syn.names, ablation=ablation)
    rows = [{"set": name, "models": len(ids),
             "ffd": ffd(syn.reps[[idx[m] for m in ids]], real_set.reps) if len(ids) >= 2 else float("nan")}
            for name, ids in sets.items()]
    per = []
    if per_model:
        mu = syn.reps[[idx[m] for m in sets.get("All") or syn.names]].mean(0)
        per = [{"real_model": nm, "l2_to_pool_mean": float(np.linalg.norm(r - mu))}
               for nm, r in zip(real_set.names, real_set.reps)]
    return PoolFFD(real_set, rows, per)
