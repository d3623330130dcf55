"""CLI for the cohort: ``fpt cohort build | info``.

Thin shell over :mod:`fpt.cohort`: embed the cohort models' images with the extractor, fit the
likelihood-ratio calibration on them, write the cohort file, render a summary with fpt.report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fpt.cli import attribution as _attr
from fpt.cli.options import DeviceOpt, ExtractorOpt, JsonOpt


def build_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Cohort file to write (the shipped extractor's: "
                             "fpt/weights/extractor.cohort.h5)."),
    images: Optional[Path] = typer.Option(None, "--images", "-i", help="DIR/<model>/<images>: one folder per "
                                          "cohort model (models you will NOT enroll)."),
    pool: Optional[Path] = typer.Option(None, "--pool", help="Synthetic-model pool (fpt synth) whose models "
                                        "make the cohort; needs --photos."),
    photos: Optional[list[Path]] = typer.Option(None, "--photos", help="Real photos the pool models are applied "
                                                "to (repeatable)."),
    models: Optional[str] = typer.Option(None, "--models", help="Only pool models matching these fnmatch "
                                         "patterns (comma-separated)."),
    per_model: int = typer.Option(24, "--per-model", help="Images per cohort model (20+ for N_S=10 calibration)."),
    size: int = typer.Option(128, "--size", help="Crop size of pool images in px."),
    top_n: int = typer.Option(50, "--top-n", help="Adaptive S-norm: highest cohort scores kept."),
    method: str = typer.Option("logistic", "--method", help="LR calibration: logistic | pav."),
    seed: int = typer.Option(0, "--seed"),
    extractor: ExtractorOpt = None,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Build a cohort (tied to the extractor's sha256) and fit its LR calibration."""
    from fpt.cohort import folder_cohort_embeddings, make_cohort, pool_cohort_embeddings, save_cohort
    from fpt.errors import ConfigError
    from fpt.report import cohort_summary, print_json, progress, render_cohort, warn

    if (images is None) == (pool is None):
        raise ConfigError("give exactly one of --images DIR (one folder per model) or --pool POOL --photos DIR")
    if pool is not None and not photos:
        raise ConfigError("--pool needs --photos: the real images its models are applied to")
    if method not in ("logistic", "pav"):
        raise ConfigError(f"--method must be logistic or pav, not '{method}'")
    if per_model < 2 or top_n < 2:
        raise ConfigError("--per-model and --top-n must be at least 2")
    ex = _attr.load_extractor(extractor, device)  # through the module: tests substitute it there
    with progress(transient=True, disable=json_out) as prog:
        task = prog.add_task("embedding cohort", total=None)

        def step(done: int, total: int) -> None:
            prog.update(task, completed=done, total=total)

        if pool is not None:
            names, emb, labels = pool_cohort_embeddings(ex, pool, photos or [], per_model=per_model, size=size,
                                                        models=models, seed=seed, progress=step)
            source = {"kind": "pool", "pool": str(pool), "photos": [str(p) for p in photos or []],
                      "models": models, "per_model": per_model, "size": size, "seed": seed}
        else:
            names, emb, labels = folder_cohort_embeddings(ex, images, per_model=per_model, seed=seed,
                                                          progress=step, on_skip=lambda m: warn(f"skipped {m}"))
            source = {"kind": "folders", "images": str(images), "per_model": per_model, "seed": seed}
    source["extractor"] = str(ex.path) if getattr(ex, "path", None) else None
    c = make_cohort(names, emb, labels, ex.sha256, source, top_n=top_n, method=method, seed=seed)
    save_cohort(c, out)
    if json_out:
        print_json(cohort_summary(c))
    else:
        render_cohort(cohort_summary(c), title=f"cohort written to {out}")

def info_cmd(
    path: Optional[Path] = typer.Argument(None, help="Cohort file (default: the one beside the default extractor)."),
    json_out: JsonOpt = False,
) -> None:
    """Summary of a cohort: models, images, extractor, in-sample calibration quality per set size."""
    from fpt.cohort import cohort_path_for, load_cohort
    from fpt.extractor.checkpoint import default_extractor_path
    from fpt.report import cohort_summary, print_json, render_cohort

    p = path if path is not None else cohort_path_for(default_extractor_path())
    if not p.exists():
        from fpt.errors import InputError

        raise InputError("no such cohort file", path=p, hint="build one: fpt cohort build (docs/calibration.md)")
    c = load_cohort(p)
    if json_out:
        print_json(cohort_summary(c))
    else:
        render_cohort(cohort_summary(c), title=f"cohort {p}")


def register(app: typer.Typer) -> None:
    """Add ``fpt cohort`` and its sub-commands to ``app``."""
    coh = typer.Typer(help="The cohort of non-enrolled models that normalises scores and calibrates likelihood "
                           "ratios: build, info.", no_args_is_help=True)
    app.add_typer(coh, name="cohort")
    coh.command("build")(build_cmd), coh.command("info")(info_cmd)
