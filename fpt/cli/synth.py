"""``fpt synth``: build, inspect, sample, merge and score pools of synthetic models.

``fpt synth --images DIR --out pool.h5`` builds (or resumes) a pool; the sub-commands
``info``, ``sample``, ``merge`` and ``ffd`` work on existing pools. All logic lives in
``fpt.synth`` and ``fpt.metrics.ffd``; this module parses, calls and renders.
"""

from __future__ import annotations

from pathlib import Path

import typer

SYNTH_HELP = """Build a pool of synthetic generative models.

As in Yang et al., 'Fingerprints of Generative Models in the Frequency Domain' (section 4) and Yang et al., 'Model Synthesis for Zero-Shot Model Attribution' (section III-B).

Frequency-distribution models (288 auto-encoder architectures, `--arch`) learn to reconstruct
crops of YOUR real images (`--images`, required) until the reconstruction MSE is <= 0.005 or
`--max-steps`; grid generators (`--grid-depths`) learn noise of magnitude 0.005 that is added to
real images. Finished models are never lost: rerun the same command to resume after a crash or
Ctrl-C. Split the work with `--shard i/n` and join with `fpt synth merge`.
"""


from fpt.cli.options import DEVICE_HELP, POSITIVE


def _parse_ints(text: str, what: str, example: str = "3,4,5") -> list[int]:
    from fpt.errors import ConfigError

    text = (text or "").strip()
    if not text or text.lower() == "none":
        return []
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"bad {what} {text!r}", hint=f"comma-separated integers, e.g. {example}") from None


def _seeds(n: int, start: int) -> list[int]:
    return list(range(start, start + max(0, n)))


def _render_summary(rows: list[dict], title: str) -> None:
    from fpt.report import print_table

    cols = ["group", "models", "archs", "reached", "loss p10", "loss p50", "loss p90",
            "steps", "s/model", "CPU-s"]
    print_table(title, cols, [[r["group"], r["models"], r["archs"], f"{100 * r['reached']:.1f}%",
                               r["loss_p10"], r["loss_p50"], r["loss_p90"], r["steps_p50"],
                               r["wall_s_p50"], r["wall_s_total"]] for r in rows],
                caption="reached: share at target; loss: FD = reconstruction MSE (target 0.005), "
                        "grid = mean |noise| (target 0.005); steps, s/model: medians; CPU-s: total")


def register(app: typer.Typer) -> None:
    """Add ``fpt synth`` and its sub-commands to ``app``."""
    synth = typer.Typer(help=SYNTH_HELP, invoke_without_command=True, no_args_is_help=False)
    app.add_typer(synth, name="synth")
    _register_ffd(synth)

    @synth.callback()
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
        device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
        workers: int = typer.Option(1, "--workers", min=1, help="CPU processes (one per core)."),
        shard: str = typer.Option(None, "--shard", help="Build only part i of n of the job list: 'i/n' (0-based); under torchrun each rank takes its share of it."),
        channels_last: bool = typer.Option(True, "--channels-last/--no-channels-last", help="channels-last memory format (faster on CPU)."),
        json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
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
        from fpt.report import err_console, print_json, progress, warn
        from fpt.synth.pool import build_pool, summarise
        from fpt.synth.space import grid_space, select_archs, select_ld_archs
        from fpt.scan import shard_spec
        from fpt.synth.train import CropBank, TrainConfig, plan_jobs, shard_jobs

        dev = select_device(device)
        cfg = TrainConfig(size=size, width=width, kernel=kernel, batch=batch, lr=lr, max_steps=max_steps,
                          target=target, patience=patience, channels_last=channels_last)
        fd_archs = [] if arch.strip().lower() == "none" else select_archs(arch, blocks=tuple(_parse_ints(blocks, "--blocks", "1,2,3")))
        ld_archs = select_ld_archs(ld_arch)
        if ld_archs and size < 16 * max(a.F for a in ld_archs) // 4:
            raise ConfigError(f"--size {size} leaves latent decoders a latent grid under 4 x 4",
                              hint="use --size 64 (f16 -> 4 x 4 latent) or more")
        grid_archs = grid_space(_parse_ints(grid_depths, "--grid-depths"))
        jobs = plan_jobs(fd_archs + ld_archs, _seeds(seeds, seed_start), grid_archs, _seeds(grid_seeds, seed_start))
        # --shard i/n and torchrun ranks combine into one flat part (fpt.scan.shard_spec): every
        # rank of every shard trains its own models into the same pool (its journal + lock make
        # concurrent writers safe), so torchrun needs no merge step
        sh = shard_spec(shard)
        jobs = shard_jobs(jobs, sh.index, sh.count)
        if not jobs:
            raise ConfigError("nothing to train", hint="check --arch, --seeds, --grid-depths, --grid-seeds")
        err_console.print(f"decoding {crops} crops of {size} px from {', '.join(map(str, images))} ...")
        bank = CropBank.from_folder(images, size, n_crops=crops, max_images=max_images or None, on_skip=warn)
        state = {}
        with progress() as bar:
            task = bar.add_task("training", total=len(jobs))

            def on_start(todo: int, skipped: int) -> None:
                if skipped:
                    err_console.print(f"resuming: {skipped} models already in {out}")
                bar.update(task, total=todo)
                state["task"] = task

            def on_done(rec) -> None:
                mark = "ok" if rec.reached_target else "cap"
                bar.update(task, advance=1, description=f"{rec.model_id} {mark} {rec.final_loss:.4f}")

            trained, skipped = build_pool(out, jobs, bank, cfg, device=dev, workers=workers,
                                          on_start=on_start, on_done=on_done)
        rows = summarise(trained)
        if json_out:
            print_json({"pool": str(out), "trained": len(trained), "skipped": skipped, "summary": rows})
        else:
            _render_summary(rows, f"trained {len(trained)} models into {out} ({skipped} already there)")

    @synth.command("info")
    def info(
        pool: Path = typer.Argument(..., help="Pool file."),
        by: str = typer.Option("family", "--by", help="Group rows by family or a factor: K, L, S, U, A, N, D."),
        models: bool = typer.Option(False, "--models", help="List every model with its record."),
        json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    ) -> None:
        """Summary table of an existing pool (per family or factor)."""
        from fpt.report import print_json, print_table, warn
        from fpt.synth.pool import Pool, summarise

        with Pool.open(pool) as p:
            recs = p.records()
            rows = summarise(recs, by=by)
            pending, config = p.pending, p.config
        if json_out:
            print_json({"pool": str(pool), "models": len(recs), "pending": pending, "config": config,
                        "summary": rows, "records": recs if models else None})
            return
        _render_summary(rows, f"{pool}: {len(recs)} models")
        if pending:
            warn(f"{pending} finished models wait in {pool}.parts/ (rerun the build command to merge them)")
        if models:
            print_table(None, ["model", "steps", "final loss", "reached", "wall s"],
                        [[r.model_id, r.steps, r.final_loss, r.reached_target, r.wall_s] for r in recs])

    @synth.command("sample")
    def sample(
        pool: Path = typer.Argument(..., help="Pool file."),
        model: str = typer.Argument(..., help="Model id, e.g. K2-L1-post-deconv-relu-bn/s000 (see fpt synth info --models)."),
        images: list[Path] = typer.Argument(..., help="Real images or folders to fingerprint."),
        out: Path = typer.Option(..., "--out", "-o", help="Folder for the fingerprinted PNGs."),
        seed: int = typer.Option(0, "--seed", help="Noise seed (grid generators)."),
        device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    ) -> None:
        """Write images as the synthetic model would make them (FD: reconstruction; grid: + noise)."""
        import numpy as np
        import torch
        from PIL import Image

        from fpt.devices import select_device
        from fpt.images import LoadFailure, find_images, iter_images
        from fpt.report import console, warn
        from fpt.storage import atomic_path
        from fpt.synth.pool import Pool, fingerprint

        dev = select_device(device)
        files = find_images(images)
        out.mkdir(parents=True, exist_ok=True)
        written = 0
        with Pool.open(pool) as p:
            spec = p.spec(model)
            net = p.load(model, dev)
            g = torch.Generator(device=dev).manual_seed(seed)
            for path, img in iter_images(files):
                if isinstance(img, LoadFailure):
                    warn(img.reason)
                    continue
                y = fingerprint(net, spec, img.unsqueeze(0).to(dev), g)[0]
                arr = (y.permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
                target = out / f"{path.stem}.{model.replace('/', '_')}.png"
                with atomic_path(target) as tmp:
                    Image.fromarray(arr).save(tmp, format="PNG")
                written += 1
        console.print(f"wrote {written} fingerprinted images to {out}")

    @synth.command("merge")
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


def _register_ffd(synth: typer.Typer) -> None:
    @synth.command("ffd")
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
        device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
        json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    ) -> None:
        """Fréchet Frequency Distance between a pool and real generators (lower = more realistic)."""
        import numpy as np

        from fpt.devices import select_device
        from fpt.errors import ConfigError
        from fpt.metrics.ffd import ablation_subsets, ffd, folder_model_set, pool_model_set
        from fpt.report import print_json, print_table, progress, warn
        from fpt.synth.pool import Pool
        from fpt.synth.train import CropBank

        if not images:
            raise ConfigError("--images is required: real photos to run the synthetic models on",
                              hint="use the same images the pool was trained on")
        dev = select_device(device)
        real_set = folder_model_set(real, n=n, size=size, residual=residual, exclude=exclude or ())
        for name, why in real_set.skipped.items():
            warn(f"real model {name} skipped: {why}")
        bank = CropBank.from_folder(images, size, n_crops=n, seed=seed, on_skip=warn)
        with Pool.open(pool) as p, progress(transient=True) as bar:
            task = bar.add_task("spectra of synthetic models", total=len(p.model_ids))
            syn = pool_model_set(p, bank.crops, residual=residual, seed=seed, device=dev,
                                 on_model=lambda _: bar.advance(task))
        idx = {m: i for i, m in enumerate(syn.names)}
        rows = []
        fd_ids = [m for m in syn.names if not m.startswith(("grid-", "LD-"))]
        grid_ids = [m for m in syn.names if m.startswith("grid-")]
        ld_ids = [m for m in syn.names if m.startswith("LD-")]
        sets = ablation_subsets(syn.names) if ablation else ({"All": fd_ids} if fd_ids else {})
        if ld_ids:
            sets["latent decoders"] = ld_ids
        if grid_ids:
            sets["grid generators"] = grid_ids
            sets["FD + grid"] = list(syn.names)
        for name, ids in sets.items():
            value = ffd(syn.reps[[idx[m] for m in ids]], real_set.reps) if len(ids) >= 2 else float("nan")
            rows.append({"set": name, "models": len(ids), "ffd": value})
        per = []
        if per_model:
            mu = syn.reps[[idx[m] for m in fd_ids or syn.names]].mean(0)
            per = [{"real_model": nm, "l2_to_pool_mean": float(np.linalg.norm(r - mu))}
                   for nm, r in zip(real_set.names, real_set.reps)]
        result = {"pool": str(pool), "real": str(real), "real_models": real_set.names,
                  "skipped": real_set.skipped, "n": n, "size": size, "residual": residual, "ffd": rows,
                  "per_model": per or None}
        if json_out:
            print_json(result)
            return
        print_table(f"FFD of {pool.name} vs {len(real_set.names)} real models in {real}",
                    ["synthetic set", "models", "FFD"], [[r["set"], r["models"], r["ffd"]] for r in rows],
                    caption=f"{n} images/model, {size}-px centre crops, {residual} residual, log-AI min-max")
        if per:
            print_table(None, ["real model", "L2 to synthetic mean"], [[r["real_model"], r["l2_to_pool_mean"]] for r in per])
