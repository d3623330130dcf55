"""CLI commands for the train stage: ``fpt train``, ``fpt train-denoiser``, ``fpt extractor-info``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from fpt.cli.options import DEVICE_HELP, HALF_OPEN_UNIT, NON_NEGATIVE, POSITIVE, PROBABILITY
from fpt.errors import ConfigError


def _range(text: str | None, cast, what: str, bounds: tuple[float, float] | None = None):
    if text is None:
        return None
    try:
        lo, hi = (cast(v) for v in text.replace(",", "-").split("-", 1))
    except ValueError:
        raise ConfigError(f"{what} must look like LO-HI, got '{text}'") from None
    if lo > hi:
        raise ConfigError(f"{what}: LO must not exceed HI ('{text}')")
    if bounds is not None and not (bounds[0] <= lo and hi <= bounds[1]):
        raise ConfigError(f"{what}: '{text}' is outside {bounds[0]:g}-{bounds[1]:g}")
    return (lo, hi)


def _rounded(v):
    if isinstance(v, dict):
        return {k: _rounded(x) for k, x in v.items() if k != "lr"}
    return round(v, 4) if isinstance(v, float) else v


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def train_cmd(
    pool: Optional[List[str]] = typer.Option(None, "--pool", help="Synthetic-model pool (fpt synth output; repeatable), or toy:N for a smoke test."),
    only_reached: Optional[bool] = typer.Option(None, "--only-reached/--all-models", help="Use only pool models that reached their training target (default: all)."),
    models: Optional[str] = typer.Option(None, "--models", help="Train only on pool models whose ids match these comma-separated fnmatch patterns, e.g. 'K*' (FD only) or 'grid-*'."),
    images: Optional[List[Path]] = typer.Option(None, "--images", help="Folder(s) of real photos to fingerprint (repeatable)."),
    out: Path = typer.Option(..., "--out", help="Extractor checkpoint to write (required; resume state goes beside it as NAME.state.pt). Its folder must exist."),
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Start from a recipe: 'default' (the shipped extractor) or 'smoke'."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Optimizer steps."),
    p: Optional[int] = typer.Option(None, "--p", "--P", "-P", min=2, help="Synthetic models per batch (>= 2)."),
    k: Optional[int] = typer.Option(None, "--k", "--K", "-K", min=2, help="Images per model per batch (>= 2)."),
    lr: Optional[float] = typer.Option(None, "--lr", callback=POSITIVE, help="Peak learning rate (AdamW)."),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="cosine | step | constant (after linear warm-up)."),
    warmup: Optional[int] = typer.Option(None, "--warmup", min=0, help="Warm-up steps."),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", callback=NON_NEGATIVE, help="AdamW weight decay."),
    ce_weight: Optional[float] = typer.Option(None, "--ce-weight", callback=NON_NEGATIVE, help="Weight of the classification (CE) loss."),
    triplet_weight: Optional[float] = typer.Option(None, "--triplet-weight", callback=NON_NEGATIVE, help="Weight of the batch-hard triplet loss."),
    margin: Optional[float] = typer.Option(None, "--margin", callback=NON_NEGATIVE, help="Triplet margin (paper: 0.3)."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="resnet10 | resnet18 | resnet34 | resnet50."),
    width: Optional[float] = typer.Option(None, "--width", callback=POSITIVE, help="Channel width multiplier (1.0 = torchvision)."),
    stem: Optional[str] = typer.Option(None, "--stem", help="small (3x3/2) | imagenet (7x7/2 + max-pool)."),
    embedding_dim: Optional[int] = typer.Option(None, "--embedding-dim", min=1, help="Embedding dimension."),
    embed_from: Optional[str] = typer.Option(None, "--embed-from", help="Inference embedding: projection | features | auto (the better on held-out architectures)."),
    crop_size: Optional[int] = typer.Option(None, "--crop-size", min=8, help="Training crop = inference window, px."),
    residual: Optional[str] = typer.Option(None, "--residual", help="highpass | denoiser (the learned DnCNN-style residual)."),
    denoiser: Optional[Path] = typer.Option(None, "--denoiser", help="Denoiser weights (default: the shipped ones)."),
    grey: Optional[bool] = typer.Option(None, "--grey/--rgb", help="Luma spectrum instead of per-channel RGB."),
    windows: Optional[int] = typer.Option(None, "--windows", min=1, help="n for the n x n inference window grid stored in the checkpoint."),
    whiten_models: Optional[int] = typer.Option(None, "--whiten-models", min=0, help="Training models that fit the fingerprint whitening stored in the checkpoint (0: no whitening)."),
    whiten_shrinkage: Optional[float] = typer.Option(None, "--whiten-shrinkage", callback=NON_NEGATIVE, help="Shrinkage of the whitening's within-model covariance (relative to its mean eigenvalue)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of models, batches and augmentations."),
    holdout_frac: Optional[float] = typer.Option(None, "--holdout-frac", callback=HALF_OPEN_UNIT, help="Fraction of architectures held out for validation."),
    holdout_archs: Optional[str] = typer.Option(None, "--holdout-archs", help="fnmatch pattern of held-out architecture ids (overrides --holdout-frac)."),
    val_every: Optional[int] = typer.Option(None, "--val-every", min=1, help="Validate every N steps."),
    ckpt_every: Optional[int] = typer.Option(None, "--ckpt-every", min=1, help="Save resumable state every N steps."),
    crops_per_image: Optional[int] = typer.Option(None, "--crops-per-image", min=1, help="Crops taken from each real image per pass."),
    max_images: Optional[int] = typer.Option(None, "--max-images", min=1, help="Use at most N real images."),
    aug_jpeg: Optional[float] = typer.Option(None, "--aug-jpeg", callback=PROBABILITY, help="Probability of JPEG re-compression after the synthetic model."),
    jpeg_quality: Optional[str] = typer.Option(None, "--jpeg-quality", help="Quality range LO-HI, e.g. 70-100."),
    aug_rrc: Optional[float] = typer.Option(None, "--aug-rrc", callback=PROBABILITY, help="Probability of random resized crop."),
    aug_blur: Optional[float] = typer.Option(None, "--aug-blur", callback=PROBABILITY, help="Probability of mild Gaussian blur."),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", callback=POSITIVE, help="Wall-clock budget: stop (annealed, validated, saved) when it runs out."),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="Mixed precision on CUDA."),
    half: Optional[bool] = typer.Option(None, "--fp16/--fp32", help="Store the final extractor's weights in fp16."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT's .state.pt."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Train a fingerprint extractor on synthetic models (zero-shot: no real generator is used)."""
    from fpt.storage import check_writable

    # First, before any work or import of torch, and never a silent mkdir or overwrite: the
    # output is the file the user named (a run from the repo root once replaced the shipped
    # fpt/weights/extractor.pt).
    check_writable(out, what="extractor checkpoint", overwrite=force or resume)
    from fpt.extractor.train import PRESETS, TrainConfig

    values: dict = {}
    if preset:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset '{preset}'", hint=f"choose one of {sorted(PRESETS)}")
        values.update(PRESETS[preset])
        values["preset"] = preset
    given = dict(pool=",".join(pool) if pool else None, only_reached=only_reached, models=models, images=[str(i) for i in images] if images else None, out=str(out),
                 steps=steps, P=p, K=k, lr=lr, schedule=schedule, warmup=warmup, weight_decay=weight_decay,
                 ce_weight=ce_weight, triplet_weight=triplet_weight, margin=margin, backbone=backbone,
                 width=width, stem=stem, embedding_dim=embedding_dim, embed_from=embed_from, crop_size=crop_size, residual=residual,
                 denoiser=str(denoiser) if denoiser else None, grey=grey, windows=windows, seed=seed,
                 whiten_models=whiten_models, whiten_shrinkage=whiten_shrinkage,
                 holdout_frac=holdout_frac, holdout_pattern=holdout_archs, val_every=val_every,
                 ckpt_every=ckpt_every, crops_per_image=crops_per_image, max_images=max_images,
                 aug_jpeg_p=aug_jpeg, jpeg_quality=_range(jpeg_quality, int, "--jpeg-quality", (1, 100)),
                 aug_rrc_p=aug_rrc, aug_blur_p=aug_blur, device=device, max_minutes=max_minutes, amp=amp, half=half)
    values.update({kk: v for kk, v in given.items() if v is not None})
    if "pool" not in values:
        raise ConfigError("no synthetic-model pool given", hint="pass --pool POOL.h5 (build one with `fpt synth`) or --preset default")
    if "images" not in values and not str(values.get("pool", "")).startswith("toy:"):
        raise ConfigError("no real images given", hint="pass --images DIR")
    if str(values.get("pool", "")).startswith("toy:") and "images" not in values:
        raise ConfigError("toy pools still need real photos", hint="pass --images DIR")
    if values.get("pool") and not values["pool"].startswith("toy:"):
        for pth in values["pool"].split(","):
            if not Path(pth).exists():
                from fpt.errors import InputError

                hint = "build it with `fpt synth --images DIR --out POOL.h5` (see README, 'Training the extractor')"
                if preset == "default" and not pool:
                    hint = "build the default pool first; examples/reproduce_default_extractor.sh runs the whole recipe"
                raise InputError("synthetic-model pool not found", path=pth, hint=hint)
    # Before any work, and never a silent mkdir or overwrite: the output is the user's named
    # file (a run from the repo root once replaced the shipped fpt/weights/extractor.pt).
    result = _train_with_progress(TrainConfig(**values), resume=resume, quiet=quiet, json_out=json_out)
    if result is not None:  # None: a non-zero DDP rank
        _print_train_result(result, json_out)


def _train_with_progress(cfg, *, resume: bool, quiet: bool, json_out: bool):
    """:func:`fpt.extractor.train.train` with a step bar (rank 0 only) and log lines on stderr."""
    import os

    from fpt.extractor.train import train
    from fpt.report import step_progress

    # The core reports steps on rank 0 only; other torchrun ranks draw no bar.
    rank0 = os.environ.get("RANK", "0") in ("", "0")
    with step_progress("train", cfg.steps, disable=quiet or json_out or not rank0) as on_step:
        return train(cfg, resume=resume, on_step=on_step,
                     log=(lambda *_: None) if json_out else (lambda m: typer.echo(m, err=True)))


def _print_train_result(result, json_out: bool) -> None:
    summary = {"out": str(result.out), "sha256": result.sha256, "steps": result.steps,
               "wall_s": round(result.wall_s, 1), "images_per_s": round(result.images_per_s, 1),
               "train_models": result.n_train_models, "heldout_models": result.n_val_models,
               "embedding": result.embed_from, "heldout": result.chosen, "heldout_all": result.final,
               "heldout_images": result.unwhitened, "heldout_images_whitened": result.whitened,
               "baseline_azimuthal": result.baseline, "history": result.history}
    if json_out:
        typer.echo(json.dumps(summary, indent=2))
        return
    from rich.table import Table

    from fpt.report import console as c

    t = Table(title=f"fpt train: {result.out}  (sha256 {result.sha256[:12]})")
    t.add_column("held-out architectures")
    t.add_column(f"crops: extractor ({result.embed_from})", justify="right")
    t.add_column("crops: azimuthal-integral baseline", justify="right")
    if result.whitened:
        t.add_column("whole images: extractor", justify="right")
        t.add_column("whole images: + whitening (saved)", justify="right")
    for key, label in (("auc", "verification AUC (N_S=1)"), ("id_acc_10shot", "10-shot identification acc")):
        w = [_fmt(result.unwhitened.get(key, "-")), _fmt(result.whitened.get(key, "-"))] if result.whitened else []
        t.add_row(label, _fmt(result.chosen.get(key, "-")), _fmt(result.baseline.get(key, "-")), *w)
    c.print(t)
    c.print(f"{result.steps} steps in {result.wall_s:.0f} s ({result.images_per_s:.0f} img/s); "
            f"{result.n_train_models} training models, {result.n_val_models} held-out models")

def train_denoiser_cmd(
    images: List[Path] = typer.Option(..., "--images", help="Folder(s) of real photos."),
    out: Path = typer.Option(Path("denoiser.pt"), "--out", help="Weights file to write (its folder must exist)."),
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
    steps: int = typer.Option(1500, "--steps", min=1, help="Optimizer steps."),
    batch: int = typer.Option(32, "--batch", min=1, help="Crops per step."),
    depth: int = typer.Option(6, "--depth", min=1, help="Conv layers (DnCNN paper: 17)."),
    channels: int = typer.Option(24, "--channels", min=1, help="Feature channels (DnCNN paper: 64)."),
    crop_size: int = typer.Option(64, "--crop-size", min=8, help="Training crop side, px."),
    sigma: str = typer.Option("1-5", "--sigma", help="Noise sigma range in 8-bit levels, LO-HI."),
    seed: int = typer.Option(0, "--seed", help="Seed of crops and noise."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Train the small DnCNN-style denoiser whose residual the extractor can use (--residual denoiser)."""
    from fpt.storage import check_writable

    lo, hi = _range(sigma, float, "--sigma", (0, 255))
    check_writable(out, what="denoiser weights file", overwrite=force)
    from rich.progress import Progress

    from fpt.extractor.denoiser import train_denoiser_from_folders

    with Progress(disable=json_out) as prog:
        task = prog.add_task("denoiser", total=steps)
        rep = train_denoiser_from_folders([str(i) for i in images], out, crop_size=crop_size, depth=depth,
                                          channels=channels, steps=steps, batch=batch,
                                          sigma_range=(lo / 255, hi / 255), seed=seed,
                                          progress=lambda s, l: prog.update(task, completed=s,
                                                                            description=f"denoiser loss {l:.2e}"))
    res = {"out": str(out), "steps": rep.steps, "psnr_noisy_db": round(rep.psnr_noisy, 2),
           "psnr_denoised_db": round(rep.psnr_denoised, 2), "wall_s": round(rep.wall_s, 1)}
    typer.echo(json.dumps(res, indent=2) if json_out else
               f"wrote {out}: held-out PSNR {rep.psnr_noisy:.2f} dB noisy -> {rep.psnr_denoised:.2f} dB denoised "
               f"({rep.steps} steps, {rep.wall_s:.0f} s)")

def extractor_info_cmd(
    path: Optional[Path] = typer.Argument(None, help="Checkpoint (default: the shipped extractor)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Show an extractor checkpoint's identity, preprocessing, training recipe and validation."""
    from dataclasses import asdict

    from fpt.extractor.checkpoint import load_extractor

    ex = load_extractor(path, device="cpu")
    info = {"path": str(ex.path), "sha256": ex.sha256, "embedding_dim": ex.embedding_dim,
            "network": {k: v for k, v in ex.net.config.items() if k not in ("spec_mean", "spec_std")},
            "preprocessing": asdict(ex.preprocessing), "whitening": ex.whitening is not None, "training": ex.config}
    if json_out:
        typer.echo(json.dumps(info, indent=2))
        return
    from rich.table import Table

    from fpt.report import console

    t = Table(title=f"extractor {ex.path}", show_header=False)
    t.add_column("field")
    t.add_column("value")
    t.add_row("sha256", ex.sha256)
    n = ex.net.config
    t.add_row("network", f"{n['backbone']} x{n['width']} ({n['stem']} stem), {ex.embedding_dim}-d embedding "
              f"from the {n.get('embed_from', 'projection')}")
    p = ex.preprocessing
    t.add_row("preprocessing", f"{p.residual} residual -> {'luma' if p.grey else 'per-channel RGB'} {p.spectrum} DFT, "
              f"{p.crop_size}px crops, {p.windows}x{p.windows} windows")
    c = ex.config
    t.add_row("whitening", (f"yes: within-model covariance of {c.get('whiten_models', '?')} training models, "
                            f"shrinkage {c.get('whiten_shrinkage', '?')}") if ex.whitening is not None else "none")
    if c.get("untrained"):
        t.add_row("training", "UNTRAINED placeholder")
    else:
        # validation_whitening: held-out archs on held-out photos, without / with whitening
        labels = {"heldout_archs": "held-out archs", "validation_whitening": "whole images"}
        for key in ("preset", "pool", "residual", "steps_done", "P", "K", "lr", "seed", "world_size", "wall_s",
                    "train_models", "heldout_archs", "validation", "baseline", "validation_whitening"):
            if key not in c:
                continue
            v = c[key]
            if key == "heldout_archs":
                v = f"{len(v)} architectures (validation only)"
            t.add_row(labels.get(key, key), json.dumps(_rounded(v)) if isinstance(v, (dict, list)) else str(v))
    console.print(t)


def register(app: typer.Typer) -> None:
    """Add this module's commands to app."""
    for name, fn in (("train", train_cmd), ("train-denoiser", train_denoiser_cmd), ("extractor-info", extractor_info_cmd)):
        app.command(name)(fn)
