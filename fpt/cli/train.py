"""CLI commands for the train stage: ``fpt train``, ``fpt train-denoiser``, ``fpt extractor-info``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from fpt.cli.options import DEVICE_HELP, HALF_OPEN_UNIT, NON_NEGATIVE, POSITIVE, PROBABILITY, JsonOpt


def train_cmd(
    pool: Optional[List[str]] = typer.Option(None, "--pool", help="Synthetic-model pool (fpt synth output; repeatable), or toy:N for a smoke test."),
    only_reached: Optional[bool] = typer.Option(None, "--only-reached/--all-models", help="Use only pool models that reached their training target (default: all)."),
    only_learned: Optional[bool] = typer.Option(None, "--only-learned", help="Leave out pool models that never beat a constant output (collapsed; `fpt synth info` counts them)."),
    models: Optional[str] = typer.Option(None, "--models", help="Train only on pool models whose ids match these comma-separated fnmatch patterns, e.g. 'K*' (FD only) or 'grid-*'."),
    images: Optional[List[Path]] = typer.Option(None, "--images", help="Folder(s) of real photos to fingerprint (repeatable)."),
    out: Path = typer.Option(..., "--out", help="Extractor checkpoint to write (required; resume state goes beside it as NAME.state.pt). Its folder must exist."),
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Start from a recipe: 'default' (the shipped extractor) or 'smoke'."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Optimizer steps."),
    P: Optional[int] = typer.Option(None, "--p", "--P", "-P", min=2, help="Synthetic models per batch (>= 2)."),
    K: Optional[int] = typer.Option(None, "--k", "--K", "-K", min=2, help="Images per model per batch (>= 2)."),
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
    holdout_pattern: Optional[str] = typer.Option(None, "--holdout-archs", help="fnmatch pattern of held-out architecture ids (overrides --holdout-frac)."),
    val_every: Optional[int] = typer.Option(None, "--val-every", min=1, help="Validate every N steps."),
    ckpt_every: Optional[int] = typer.Option(None, "--ckpt-every", min=1, help="Save resumable state every N steps."),
    crops_per_image: Optional[int] = typer.Option(None, "--crops-per-image", min=1, help="Crops taken from each real image per pass."),
    max_images: Optional[int] = typer.Option(None, "--max-images", min=1, help="Use at most N real images."),
    aug_jpeg_p: Optional[float] = typer.Option(None, "--aug-jpeg", callback=PROBABILITY, help="Probability of JPEG re-compression after the synthetic model."),
    jpeg_quality: Optional[str] = typer.Option(None, "--jpeg-quality", help="Quality range LO-HI, e.g. 70-100."),
    aug_rrc_p: Optional[float] = typer.Option(None, "--aug-rrc", callback=PROBABILITY, help="Probability of random resized crop."),
    aug_blur_p: Optional[float] = typer.Option(None, "--aug-blur", callback=PROBABILITY, help="Probability of mild Gaussian blur."),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", callback=POSITIVE, help="Wall-clock budget: stop (annealed, validated, saved) when it runs out."),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="Mixed precision on CUDA."),
    half: Optional[bool] = typer.Option(None, "--fp16/--fp32", help="Store the final extractor's weights in fp16."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT's .state.pt."),
    json_out: JsonOpt = False,
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Train a fingerprint extractor on synthetic models (zero-shot: no real generator is used)."""
    options = {k: v for k, v in locals().items() if k not in ("preset", "force", "resume", "json_out", "quiet")}
    from fpt.storage import check_writable
    check_writable(out, what="extractor checkpoint", overwrite=force or resume)  # before any work: no silent overwrite
    from fpt.extractor.train import training_config

    cfg = training_config(preset, options)  # the options are named as TrainConfig's fields
    result = _train_with_progress(cfg, resume=resume, quiet=quiet, json_out=json_out)
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
    from fpt.report import print_json, render_train_result

    if json_out:
        print_json(result.summary())
    else:
        render_train_result(result)


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
    json_out: JsonOpt = False,
) -> None:
    """Train the small DnCNN-style denoiser whose residual the extractor can use (--residual denoiser)."""
    from fpt.extractor.train import parse_range
    from fpt.storage import check_writable

    lo, hi = parse_range(sigma, float, "--sigma", (0, 255))
    check_writable(out, what="denoiser weights file", overwrite=force)
    from fpt.extractor.denoiser import train_denoiser_from_folders
    from fpt.report import console, print_json, step_progress

    with step_progress("denoiser", steps, disable=json_out) as on_step:
        rep = train_denoiser_from_folders([str(i) for i in images], out, crop_size=crop_size, depth=depth,
                                          channels=channels, steps=steps, batch=batch,
                                          sigma_range=(lo / 255, hi / 255), seed=seed,
                                          progress=lambda done, loss: on_step(done, steps, f"loss {loss:.2e}"))
    if json_out:
        print_json({"out": str(out), "steps": rep.steps, "psnr_noisy_db": round(rep.psnr_noisy, 2),
                    "psnr_denoised_db": round(rep.psnr_denoised, 2), "wall_s": round(rep.wall_s, 1)})
    else:
        console.print(f"wrote {out}: held-out PSNR {rep.psnr_noisy:.2f} dB noisy -> {rep.psnr_denoised:.2f} dB "
                      f"denoised ({rep.steps} steps, {rep.wall_s:.0f} s)", markup=False)


def extractor_info_cmd(
    path: Optional[Path] = typer.Argument(None, help="Checkpoint (default: the shipped extractor)."),
    json_out: JsonOpt = False,
) -> None:
    """Show an extractor checkpoint's identity, preprocessing, training recipe and validation."""
    from fpt.extractor.checkpoint import load_extractor
    from fpt.report import print_json, render_extractor_info

    info = load_extractor(path, device="cpu").describe()
    if json_out:
        print_json(info)
    else:
        render_extractor_info(info)


def register(app: typer.Typer) -> None:
    """Add this module's commands to app."""
    for name, fn in (("train", train_cmd), ("train-denoiser", train_denoiser_cmd), ("extractor-info", extractor_info_cmd)):
        app.command(name)(fn)
