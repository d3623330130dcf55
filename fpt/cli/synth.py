"""``fpt synth``: build, inspect, sample, merge and score pools of synthetic models.

``fpt synth --images DIR --out pool.h5`` builds (or resumes) a pool; the sub-commands
``info``, ``sample``, ``merge`` and ``ffd`` work on existing pools. All logic lives in
``fpt.synth`` and ``fpt.metrics.ffd``; this module parses, calls and renders.
"""

from __future__ import annotations

from pathlib import Path

import typer

SYNTH_HELP = (
    "Build a pool of synthetic generative models.\n\n"
    "As in Yang et al., 'Fingerprints of Generative Models in the Frequency Domain' (section 4) and Yang et al., "
    "'Model Synthesis for Zero-Shot Model Attribution' (section III-B).\n\n"
    "Frequency-distribution models (288 auto-encoder architectures, --arch) learn to reconstruct crops of YOUR real "
    "images (--images, required) until the reconstruction MSE is <= 0.005 or --max-steps; grid generators "
    "(--grid-depths) learn noise of magnitude 0.005 that is added to real images. Finished models are never lost: "
    "rerun the same command to resume after a crash or Ctrl-C. Split the work with --shard i/n and join with "
    "fpt synth merge."
)


from fpt.cli.options import POSITIVE, DeviceOpt, JsonOpt


def build(
    ctx: typer.Context,
    images: list[Path] = typer.Option(None, "--images", "-i", help="Real images (folders or files) the models learn from; repeatable. Required."),
    out: Path = typer.Option(Path("pool.h5"), "--out", "-o", help="Pool file to create or resume."),
    seeds: int = typer.Option(1, "--seeds", min=1, help="Seeds per FD architecture (paper: 20)."),
    seed_start: int = typer.Option(0, "--seed-start", min=0, help="First seed number."),
    arch: str = typer.Option("*", "--arch", help="FD architectures: fnmatch pattern(s), comma-separated, e.g. 'K1-*-deconv-*'; 'none' for no FD models."),
    ld_arch: str = typer.Option("none", "--ld-arch", help="Latent-decoder architectures (extension, DESIGN §2b): fnmatch pattern(s) such as 'LD-*' or 'LD-f8-*-gn-*'; 'none' (default) for none. Train them on --size >= 64."),
    blocks: str = typer.Option("1,2", "--blocks", help="FD down/up block counts K (paper: 1,2; 3 adds x8 up-sampling stacks like latent-diffusion decoders)."),
    grid_depths: str = typer.Option("3,4,5", "--grid-depths", help="Grid generator depths, e.g. 3,4,5; 'none' for no grid models."),
    grid_seeds: int = typer.Option(1, "--grid-seeds", min=0, help="Seeds per grid depth (paper: 500)."),
    size: int = typer.Option(64, "--size", min=8, help="Training crop size in pixels (multiple of 4, >= 8)."),
    width: int = typer.Option(16, "--width", min=1, help="Base channel width of the synthetic models."),
    kernel: int = typer.Option(3, "--kernel", min=1, help="Conv kernel size (odd)."),
    batch: int = typer.Option(16, "--batch", min=1, help="Crops per training step."),
    lr: float = typer.Option(5e-3, "--lr", callback=POSITIVE, help="Adam learning rate."),
    max_steps: int = typer.Option(300, "--max-steps", min=1, help="Step cap per model (training stops earlier at the target)."),
    target: float = typer.Option(0.005, "--target", callback=POSITIVE, help="FD stop target: reconstruction MSE."),
    patience: int = typer.Option(0, "--patience", min=0, help="Plateau rule (FD / latent decoders): also stop after this many held-out checks (every 10 steps) without a 2%% improvement; 0 = off."),
    crops: int = typer.Option(2048, "--crops", min=1, help="Pre-decoded crops shared by all models."),
    max_images: int = typer.Option(0, "--max-images", min=0, help="Use at most this many images (0 = all)."),
    device: DeviceOpt = "auto",
    workers: int = typer.Option(1, "--workers", min=1, help="CPU processes (one per core)."),
    group: int = typer.Option(0, "--group", min=0, help="Seeds of one architecture trained together in one launch (torch.func.vmap); 0 = auto: 16 on CUDA, 1 on CPU."),
    shard: str = typer.Option(None, "--shard", help="Build only part i of n of the job list: 'i/n' (0-based); under torchrun each rank takes its share of it."),
    channels_last: bool = typer.Option(True, "--channels-last/--no-channels-last", help="channels-last memory format (faster on CPU)."),
    json_out: JsonOpt = False,
) -> None:
    if ctx.invoked_subcommand is not None:
        return
    from fpt.errors import ConfigError
    from fpt.storage import check_writable
    if not images:
        raise ConfigError("--images is required: the real images the synthetic models learn from",
                          hint="e.g. fpt synth --images photos/ --out pool.h5 (see fpt synth --help)")
    check_writable(out, what="pool file")  # before torch's import and any work; an existing pool is resumed
    from fpt.devices import select_device
    from fpt.report import err_console, pool_progress, print_json, render_pool_summary, warn
    from fpt.scan import shard_spec
    from fpt.synth.plan import plan_pool
    from fpt.synth.pool import build_pool, summarise
    from fpt.synth.train import CropBank, TrainConfig

    # --shard / torchrun ranks each make a part of one pool (journal + lock: no merge step needed)
    sh = shard_spec(shard)
    jobs = plan_pool(arch=arch, ld_arch=ld_arch, blocks=blocks, seeds=seeds, seed_start=seed_start,
                     grid_depths=grid_depths, grid_seeds=grid_seeds, size=size,
                     shard_index=sh.index, shard_count=sh.count)
    cfg = TrainConfig(size=size, width=width, kernel=kernel, batch=batch, lr=lr, max_steps=max_steps,
                      target=target, patience=patience, channels_last=channels_last)
    err_console.print(f"decoding {crops} crops of {size} px from {', '.join(map(str, images))} ...")
    bank = CropBank.from_folder(images, size, n_crops=crops, max_images=max_images or None, on_skip=warn)
    with pool_progress(out) as (on_start, on_done):
        trained, skipped = build_pool(out, jobs, bank, cfg, device=select_device(device), workers=workers,
                                      group=group, on_start=on_start, on_done=on_done)
    rows = summarise(trained)
    if json_out:
        print_json({"pool": str(out), "trained": len(trained), "skipped": skipped, "summary": rows})
    else:
        render_pool_summary(rows, f"trained {len(trained)} models into {out} ({skipped} already there)")


def info(
    pool: Path = typer.Argument(..., help="Pool file."),
    by: str = typer.Option("family", "--by", help="Group rows by family or a factor: K, L, S, U, A, N, D."),
    models: bool = typer.Option(False, "--models", help="List every model with its record."),
    json_out: JsonOpt = False,
) -> None:
    """Summary table of an existing pool (per family or factor)."""
    from fpt.report import print_json, print_table, render_pool_summary, warn
    from fpt.synth.pool import Pool, summarise

    with Pool.open(pool) as p:
        recs = p.records()
        rows = summarise(recs, by=by)
        pending, config = p.pending, p.config
    if json_out:
        print_json({"pool": str(pool), "models": len(recs), "pending": pending, "config": config,
                    "summary": rows, "records": recs if models else None})
        return
    render_pool_summary(rows, f"{pool}: {len(recs)} models")
    if pending:
        warn(f"{pending} finished models wait in {pool}.parts/ (rerun the build command to merge them)")
    if models:
        print_table(None, ["model", "steps", "final loss", "reached", "wall s"],
                    [[r.model_id, r.steps, r.final_loss, r.reached_target, r.wall_s] for r in recs])


def sample(
    pool: Path = typer.Argument(..., help="Pool file."),
    model: str = typer.Argument(..., help="Model id, e.g. K2-L1-post-deconv-relu-bn/s000 (see fpt synth info --models)."),
    images: list[Path] = typer.Argument(..., help="Real images or folders to fingerprint."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the fingerprinted PNGs."),
    seed: int = typer.Option(0, "--seed", help="Noise seed (grid generators)."),
    device: DeviceOpt = "auto",
) -> None:
    """Write images as the synthetic model would make them (FD: reconstruction; grid: + noise)."""
    from fpt.devices import select_device
    from fpt.report import console, warn
    from fpt.synth.pool import write_fingerprinted

    written = write_fingerprinted(pool, model, images, out, seed=seed, device=select_device(device), on_skip=warn)
    console.print(f"wrote {written} fingerprinted images to {out}")


def merge(
    out: Path = typer.Argument(..., help="Merged pool to write."),
    shards: list[Path] = typer.Argument(..., help="Shard pools (built with --shard i/n)."),
    force: bool = typer.Option(False, "--force", help="Overwrite OUT if it exists."),
) -> None:
    """Join shard pools into one (same settings, disjoint models)."""
    from fpt.report import console
    from fpt.synth.pool import merge_pools

    ids = merge_pools(out, shards, force=force)
    console.print(f"merged {len(ids)} models from {len(shards)} shards into {out}")


def ffd_cmd(
    pool: Path = typer.Argument(..., help="Pool of synthetic models."),
    real: Path = typer.Option(..., "--real", help="ROOT/<model>/ folders of images from real generators."),
    images: list[Path] = typer.Option(None, "--images", "-i", help="Real images the synthetic models are applied to (required)."),
    n: int = typer.Option(100, "--n", min=2, help="Images per model (paper: 100)."),
    size: int = typer.Option(64, "--size", min=8, help="Centre-crop size for spectra (d = size/2 rings)."),
    residual: str = typer.Option("highpass", "--residual", help="Residual extractor (fpt.residual)."),
    exclude: list[str] = typer.Option(None, "--exclude", help="fnmatch patterns of real model folders to leave out, e.g. '*/real'."),
    ablation: bool = typer.Option(False, "--ablation", help="Also FFD of each 'w/o X' sub-space (Table II of Yang et al., 'Model Synthesis for Zero-Shot Model Attribution')."),
    per_model: bool = typer.Option(False, "--per-model", help="Also list each real model's distance to the pool."),
    seed: int = typer.Option(0, "--seed", help="Seed for picking real crops and grid noise."),
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Fréchet Frequency Distance between a pool and real generators (lower = more realistic)."""
    from fpt.devices import select_device
    from fpt.metrics.ffd import pool_ffd
    from fpt.report import print_json, progress, render_pool_ffd, warn

    with progress(transient=True) as bar:
        def on_pool(total: int):
            task = bar.add_task("spectra of synthetic models", total=total)
            return lambda _: bar.advance(task)

        res = pool_ffd(pool, real, images or [], n=n, size=size, residual=residual, exclude=exclude or (),
                       ablation=ablation, per_model=per_model, seed=seed, device=select_device(device),
                       on_skip=warn, on_pool=on_pool)
    for name, why in res.real.skipped.items():
        warn(f"real model {name} skipped: {why}")
    if json_out:
        print_json({"pool": str(pool), "real": str(real), "real_models": res.real.names,
                    "skipped": res.real.skipped, "n": n, "size": size, "residual": residual, "ffd": res.rows,
                    "per_model": res.per_model or None})
    else:
        render_pool_ffd(res, pool, real, n=n, size=size, residual=residual)


def register(app: typer.Typer) -> None:
    """Add ``fpt synth`` (building is its callback) and its sub-commands to ``app``."""
    synth = typer.Typer(help=SYNTH_HELP, invoke_without_command=True, no_args_is_help=False)
    app.add_typer(synth, name="synth")
    synth.callback()(build)
    for name, fn in (("info", info), ("sample", sample), ("merge", merge), ("ffd", ffd_cmd)):
        synth.command(name)(fn)
