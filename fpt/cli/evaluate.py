"""CLI for ``fpt eval``: the papers' protocols over labelled folders (fpt.evaluation), rendered here."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fpt.cli.options import (DEFAULT_MIN_LOG10_LR, HALF_OPEN_UNIT, OPEN_UNIT, CohortOpt, DeviceOpt, ExtractorOpt,
                             JsonOpt, MinLrOpt, RankOpt)


def _parse_groups(group: Optional[list[str]]) -> dict[str, list[str]]:
    """``--group NAME=model,model,...`` values as {name: models}."""
    extra: dict[str, list[str]] = {}
    for spec in group or []:
        name, sep, members = spec.partition("=")
        models_ = [m.strip() for m in members.split(",") if m.strip()]
        if not sep or not name.strip() or len(models_) < 2:
            from fpt.errors import ConfigError

            raise ConfigError(f"--group '{spec}' is not NAME=model,model,... with 2+ models")
        extra[name.strip()] = models_
    return extra


def eval_cmd(
    root: Path = typer.Argument(..., help="ROOT/<model>/* labelled folders (cnndetection <gen>/fake = model <gen>)."),
    methods: str = typer.Option("fpt,prnu,spectrum", "--methods",
                                help="Comma-separated: fpt, prnu, spectrum, artifact-rgb, artifact-freq, "
                                     "artifact-feat, artifact-rgb-fpt (artifact-* need --manifold or --real)."),
    extractor: ExtractorOpt = None,
    device: DeviceOpt = "auto",
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for ROC / histogram PNGs and eval.json "
                                       "(default: none written)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random splits and pairs."),
    pairs: int = typer.Option(2000, "--pairs", min=1, help="Test pairs per N_S (balanced)."),
    repeats: int = typer.Option(5, "--repeats", min=1, help="Random gallery / unknown draws averaged."),
    k_shot: int = typer.Option(10, "--k-shot", min=1, help="Images per model in the identification gallery."),
    unknown_fraction: float = typer.Option(0.3, "--unknown-fraction", callback=HALF_OPEN_UNIT,
                                           help="Share of models held out as unknown, in [0, 1)."),
    far: float = typer.Option(0.05, "--far", callback=OPEN_UNIT, help="FAR for the open-set threshold (gallery calibration), in (0, 1)."),
    windows: Optional[int] = typer.Option(None, "--windows", min=1, help="fpt: n x n windows (default: the checkpoint's)."),
    manifold: Optional[Path] = typer.Option(None, "--manifold", help="Real-image manifold for artifact-* methods "
                                            "(fpt manifold build)."),
    real: Optional[Path] = typer.Option(None, "--real", help="Real images for an ad-hoc manifold (artifact-* methods)."),
    figures: bool = typer.Option(True, "--figures/--no-figures", help="Write ROC and histogram PNGs."),
    group: Optional[list[str]] = typer.Option(None, "--group", help="Extra group NAME=model,model,... evaluated "
                                              "on its own too (e.g. a text-to-image subset); repeatable."),
    cohort: CohortOpt = None,
    min_lr: MinLrOpt = DEFAULT_MIN_LOG10_LR,
    rank: RankOpt = "whitened",
    json_out: JsonOpt = False,
) -> None:
    """Verification, identification, open-set, calibration (Cllr) and clustering metrics for several
    methods, same splits; plus the open-set sweep over gallery size x shots."""
    from fpt.evaluation import evaluate, to_json
    from fpt.report import print_json, progress

    mlist = [m.strip() for m in methods.split(",") if m.strip()]
    extra = _parse_groups(group)
    with progress(transient=True, disable=json_out) as prog:
        def make(desc: str, total: int):
            task = prog.add_task(desc, total=total)
            return lambda n: prog.advance(task, n)

        res = evaluate(root, mlist, seed=seed, n_pairs=pairs, k_shot=k_shot, repeats=repeats,
                       unknown_fraction=unknown_fraction, far=far,
                       representation_kwargs={"extractor": extractor, "device": device, "windows": windows,
                                              **({"manifold": manifold} if manifold else {}),
                                              **({"real_images": real} if real else {})},
                       progress=make, extra_groups=extra, cohort=cohort, min_log10_lr=min_lr,
                       rank=rank)
    data = to_json(res)
    if out is not None:  # files only where the user asked for them
        _write_eval_files(res, data, out, figures)
    if json_out:
        print_json(data)
        return
    _print_eval(res)
    if out is not None:
        from fpt.report import console

        console.print(f"figures and eval.json in {out}/")


def _write_eval_files(res, data: dict, out: Path, figures: bool) -> None:
    """PNGs (when ``figures``) and eval.json under ``out``; ``data["figures"]`` lists the PNGs."""
    from fpt.evaluation import plot_group
    from fpt.report import dumps_json
    from fpt.storage import atomic_path

    pngs = []
    out.mkdir(parents=True, exist_ok=True)
    for g in res.groups:
        if g.methods and figures:
            pngs += plot_group(g, out)
    data["figures"] = [str(p) for p in pngs]
    with atomic_path(out / "eval.json") as tmp:
        tmp.write_text(dumps_json(data))


def _print_eval(res) -> None:
    from fpt.evaluation import per_model_rows, summary_table
    from fpt.report import console, print_table, warn

    for p, e in res.failures:
        warn(f"skipped {e}")
    for g in res.groups:
        title = f"{g.group}: {len(g.models)} models, {sum(g.counts.values())} images"
        if not g.methods:
            console.print(f"{title} — " + "; ".join(g.notes))
            continue
        cols, rows = summary_table(g, k_shot=res.settings["k_shot"])
        print_table(title, cols, rows,
                    caption="cal. thr. = threshold chosen on a separate calibration split; "
                            "oracle = best threshold on the test pairs (papers' number)")
        cols, rows = per_model_rows(g)
        print_table(f"{g.group}: {res.settings['k_shot']}-shot identification accuracy per model "
                    f"(models ranked {res.settings.get('rank', 'cosine')})", cols, rows)
        for m, r in g.methods.items():
            if r.decisions is not None:
                _print_decisions(g.group, m, r.decisions, res.settings)
        for n in g.notes:
            console.print(f"  note: {n}")


def _print_decisions(group: str, method: str, decisions, settings: dict) -> None:
    from fpt.eval_decisions import cllr_rows, decision_rows
    from fpt.report import console, print_table

    cols, rows = cllr_rows(decisions)
    if rows:
        print_table(f"{group}: {method} verification calibration (test pairs)", cols, rows,
                    caption="gallery = logistic on raw cosine fitted on the calibration split; "
                            "cohort = adaptive S-norm + the cohort's calibration")
    cols, rows = decision_rows(decisions)
    if rows:
        print_table(f"{group}: {method} open-set sweep ({settings['repeats']} draws each)", cols, rows,
                    caption=f"FRR = known probes not accepted with the right model; LR level "
                            f"log10 LR >= {settings['min_log10_lr']:g}")
    for n in decisions.notes:
        console.print(f"  note ({method}): {n}", markup=False)


def register(app: typer.Typer) -> None:
    """Add ``fpt eval`` to app."""
    app.command("eval")(eval_cmd)
