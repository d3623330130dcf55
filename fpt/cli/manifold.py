"""CLI for ManiFPT (paper 002): ``fpt manifold build|info``, ``fpt artifact``, ``fpt analyse``."""

from __future__ import annotations

from pathlib import Path

import typer

from fpt.cli.options import DEVICE_HELP, JsonOpt

from fpt.errors import ConfigError, InputError

def _spaces(text: str) -> list[str]:
    from fpt.manifold.spaces import SPACES

    names = [s.strip().lower() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in SPACES]
    if bad or not names:
        raise ConfigError(f"unknown space(s): {', '.join(bad) or text!r}", hint=f"choose from {', '.join(SPACES)}")
    return names


def build_cmd(
    real: list[Path] = typer.Argument(..., help="Folders / files of REAL images (walked recursively)."),
    out: Path = typer.Option(..., "--out", "-o", help="Manifold file to write (HDF5, replaced atomically)."),
    space: str = typer.Option("rgb", "--space", help="rgb, freq, feat, or a comma list (rgb,freq)."),
    size: int = typer.Option(0, "--size", help="Side of the fixed square view in px (0 = 64; feat: extractor crop)."),
    fit: str = typer.Option("crop", "--fit", help="crop: centre crop, no resampling (keeps fingerprints); resize: thumbnail."),
    extractor: Path = typer.Option(None, "--extractor", help="feat space: extractor checkpoint (default: shipped)."),
    limit: int = typer.Option(0, "--limit", help="Use a seeded random subset of this many images (0 = all)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random choices."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Images per forward pass."),
    no_pixels: bool = typer.Option(False, "--no-pixels", help="Do not store the x* views (freq/feat figures then lack x*)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    json_out: JsonOpt = False,
) -> None:
    """Embed real images into rgb / freq / feat space and store them as a reference manifold."""
    from fpt.devices import select_device
    from fpt.manifold.spaces import resolve_spec
    from fpt.manifold.build import build_manifold
    from fpt.report import print_json, print_table, progress, warn

    dev = select_device(device)
    specs = [resolve_spec(s, size or None, fit, str(extractor) if extractor else None, dev) for s in _spaces(space)]
    with progress(disable=json_out) as bar:
        task = bar.add_task("embedding real images", total=None)

        def tick(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        rep = build_manifold(real, out, specs, device=dev, batch_size=batch_size, keep_pixels=not no_pixels,
                             limit=limit or None, seed=seed, on_progress=tick)
    for path, reason in rep.failed:
        warn(f"skipped {reason}")
    if json_out:
        print_json(rep)
        return
    rows = [[name, info["dim"], rep.count, info["calib_nn_median"]] for name, info in rep.spaces.items()]
    print_table(f"manifold {out}", ["space", "dims", "references", "median real NN distance"], rows,
                caption=f"{rep.count} images in {rep.seconds:.1f}s; {len(rep.failed)} skipped"
                + (f"; {rep.padded} smaller than the view (mirror-padded)" if rep.padded else ""))


def info_cmd(
    manifold: Path = typer.Argument(..., help="Manifold file."),
    json_out: JsonOpt = False,
) -> None:
    """Show what a manifold holds and exactly how its images were preprocessed."""
    import numpy as np

    from fpt.manifold.store import Manifold
    from fpt.report import print_json, print_table

    with Manifold(manifold) as m:
        info = {
            "path": str(manifold),
            "references": m.count,
            "created": m.created,
            "sources": m.sources,
            "spaces": {
                name: {
                    "spec": m.space(name).spec.__dict__,
                    "preprocessing": m.space(name).spec.describe(),
                    "dim": m.space(name).dim,
                    "pixels_stored": name == "rgb" or "pixels" in m.space(name).group,
                    "real_nn_distance_quartiles": (
                        [float(q) for q in np.percentile(m.space(name).calib_nn, [25, 50, 75])]
                        if m.space(name).calib_nn.size else None),
                }
                for name in m.spaces
            },
        }
    if json_out:
        print_json(info)
        return
    rows = [[n, s["dim"], s["preprocessing"], "-" if not s["real_nn_distance_quartiles"] else
             " / ".join(f"{v:.4g}" for v in s["real_nn_distance_quartiles"])] for n, s in info["spaces"].items()]
    print_table(f"{manifold}: {info['references']} real references (built {info['created']})",
                ["space", "dims", "preprocessing", "real NN dist q25/q50/q75"], rows,
                caption="sources: " + ", ".join(info["sources"]))


def artifact_cmd(
    images: list[Path] = typer.Argument(..., help="Images or folders to project onto the manifold."),
    manifold: Path = typer.Option(..., "--manifold", "-m", help="Manifold file from fpt manifold build."),
    space: str = typer.Option("", "--space", help="Space(s) to use (default: every space in the file)."),
    out: Path = typer.Option(None, "--out", "-o", help="Folder for artifact arrays (.npz) and figures (.png)."),
    no_figures: bool = typer.Option(False, "--no-figures", help="With --out: arrays only."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    json_out: JsonOpt = False,
) -> None:
    """Nearest real image x* and artifact a(x) = x - x* of each image.

    Definition 2.1 of Song et al., 'Formal Definition of Fingerprints Improves Attribution of Generative Models'.

    Reports the distance to the manifold |a| (L2 in the space), per dimension (RMS), and as the
    percentile among real images' own nearest-neighbour distances (~50: as close as real images
    are to each other; ~100: farther than almost any real image).
    """
    from fpt.devices import select_device
    from fpt.images import find_images
    from fpt.manifold.artifact import project_files
    from fpt.manifold.store import Manifold
    from fpt.report import dumps_json, print_json, print_table, progress, warn
    from fpt.storage import atomic_path

    files = find_images(images)
    with Manifold(manifold, device=select_device(device)) as m:
        names = _spaces(space) if space else None
        with progress(disable=json_out) as bar:
            task = bar.add_task("projecting", total=len(files))
            results, failures = project_files(m, files, names, out=out, figures=not no_figures,
                                              on_done=lambda _p: bar.advance(task))
    for f in failures:
        warn(f"skipped {f['error']}")
    payload = {"manifold": str(manifold), "sign_convention": "a(x) = x - x*", "results": results, "failures": failures}
    if out is not None:
        with atomic_path(out / "artifacts.json") as tmp:
            tmp.write_text(dumps_json(payload))
    if json_out:
        print_json(payload)
    else:
        rows = [[Path(r["path"]).name, r["space"], r["distance"], r["rms"],
                 "-" if r["percentile"] is None else f"{r['percentile']:.0f}",
                 Path(r["nearest_path"]).name + (" (low confidence)" if r["low_confidence"] else "")]
                for r in results]
        print_table("distance to the real-image manifold (a = x - x*)",
                    ["image", "space", "|a|", "RMS", "real pct", "nearest real x*"], rows,
                    caption=(f"written to {out}" if out else None))
    if failures and not results:
        raise InputError("none of the images could be read")


def analyse_cmd(
    source: Path = typer.Argument(..., help="ROOT folder (one sub-folder per model), an .npz of embeddings, "
                                            "or a synthetic pool (.h5, with --real)."),
    representation: str = typer.Option("artifact-rgb", "--representation", "-r",
                                       help="rgb, freq (raw spaces), artifact-rgb, artifact-freq, artifact-feat, "
                                            "artifact-rgb-fpt, or any fpt eval method (fpt, prnu, spectrum)."),
    manifold: Path = typer.Option(None, "--manifold", "-m", help="Manifold file (artifact-* representations)."),
    factors: str = typer.Option("", "--factors", help="CSV model,factor1,... or 'synth' to parse synthetic arch ids."),
    factor_names: str = typer.Option("", "--factor-names", help="Comma list restricting the factors analysed."),
    unit: str = typer.Option("", "--unit", help="image | model: cluster single images or per-model mean "
                                                "fingerprints (default: image; model for pools, whose models "
                                                "all see the same crops, so single images cluster by content)."),
    per_model: int = typer.Option(0, "--per-model", help="Use at most this many images per model (0 = all; pools: 16)."),
    real: Path = typer.Option(None, "--real", help="Pools: real images the synthetic models are applied to."),
    models: str = typer.Option("*", "--models", help="Pools: fnmatch pattern on model / architecture ids."),
    crop: int = typer.Option(64, "--crop", help="Pools: side of the real crops fed to the models (px)."),
    save: Path = typer.Option(None, "--save", help="Also write the embeddings to this .npz."),
    standardize: bool = typer.Option(False, "--standardize", help="z-score feature columns before clustering."),
    figure: Path = typer.Option(None, "--figure", help="Write a PCA scatter of the fingerprints by model (PNG)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random choices."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    json_out: JsonOpt = False,
) -> None:
    """Separability of models in a fingerprint space (FDR, NMI, silhouette, Davies-Bouldin).

    Also which design factor the fingerprint clusters follow (NMI per factor, as in Table 6 of ManiFPT, Song et al., 'Formal Definition of Fingerprints Improves Attribution of Generative Models')."""
    from fpt import separability as an
    from fpt.report import print_json, progress, warn

    # An .npz input is read, not embedded: no bar (an idle one leaves a blank line on stderr).
    with progress(disable=json_out or source.suffix == ".npz") as bar:
        task = bar.add_task("embedding", total=None, visible=False)
        fp = an.load_fingerprints(source, representation=representation, manifold=manifold, per_model=per_model,
                                  real=real, models=models, crop=crop, seed=seed, device=device,
                                  on_progress=lambda what, d, t: bar.update(task, description=what, completed=d,
                                                                            total=t, visible=True))
    for _, reason in fp.failures:
        warn(f"skipped {reason}")
    if save is not None:
        fp.save(save)
    factors = factors or fp.default_factors
    unit = unit or fp.default_unit
    sep = an.separability(fp.x, fp.labels, seed=seed, standardize=standardize)
    if figure is not None:
        an.plot_embedding(fp.x, fp.labels, figure, f"{fp.name}: {len(sep.models)} models")
    fac = None
    if factors:
        table = an.synth_factor_table(sorted(set(fp.labels))) if factors == "synth" else an.read_factor_csv(factors)
        names = [f.strip() for f in factor_names.split(",") if f.strip()] or None
        fac = an.factor_nmi(fp.x, fp.labels, table, factors=names, unit=unit, seed=seed, standardize=standardize)
    if json_out:
        print_json({"source": str(source), "representation": fp.name, "separability": sep,
                    "factor_nmi": fac, "failures": fp.failures})
        return
    _print_separability(fp.name, sep, fac, unit)


def _print_separability(name: str, sep, fac, unit: str) -> None:
    from fpt.report import print_table

    print_table(f"{name}: {sep.n} fingerprints of {len(sep.models)} models ({sep.dim} dims)",
                ["metric", "value", "reading"],
                [["FD ratio (paper 002 F.4)", sep.fdr, "inter/intra-class FD; higher = more separable"],
                 ["inter-class FD", sep.inter_fd, "mean over model pairs"],
                 ["intra-class FD", sep.intra_fd, "mean over models, two random halves"],
                 ["NMI k-means vs models", sep.nmi_kmeans, "1 = clusters are the models"],
                 ["silhouette", sep.silhouette, "-1..1, higher = better"],
                 ["Davies-Bouldin", sep.davies_bouldin, "lower = better"]],
                caption="; ".join(sep.notes) or None)
    if fac:
        print_table(f"NMI of k-means clusters vs design factor (unit: {unit})", ["factor", "NMI", "k", "values"],
                    [[f.factor, f.nmi, f.k, ", ".join(f"{k}:{v}" for k, v in f.values.items())]
                     for f in sorted(fac, key=lambda r: -r.nmi)])


def register(app: typer.Typer) -> None:
    """Add this module's commands to app."""
    manifold = typer.Typer(help="Reference manifolds of real images (ManiFPT): build one, inspect one.",
                           no_args_is_help=True)
    app.add_typer(manifold, name="manifold")
    manifold.command("build")(build_cmd), manifold.command("info")(info_cmd)
    app.command("artifact")(artifact_cmd)
    app.command("analyse")(analyse_cmd)
