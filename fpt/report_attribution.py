"""Rendering of attribution results — ``fpt enroll``, ``fpt identify``, ``fpt verify`` — as
tables, JSON or CSV: part of the report layer (:mod:`fpt.report` holds the shared helpers).

Kept apart from :mod:`fpt.report` because it reads :mod:`fpt.attribution`'s records, and the
core (attribution, gallery) uses fpt.report for figures and JSON: one module would make a cycle.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

from rich.table import Table
from rich.text import Text

from fpt.report import console, format_lr, gallery_check_messages, literal, print_json, score_digits, visible, warn


def render_enrolment(res: Any, chk: Any, *, json_out: bool) -> None:
    """``fpt enroll``'s result (a fpt.api.Enrolment) and the gallery check after it
    (fpt.attribution.check_gallery; None: skipped)."""
    rates, warnings = gallery_check_messages(chk) if chk is not None else (None, [])
    decision = None if chk is None else {"rule": chk.rule, "level": chk.level, "expected_far": chk.expected_far,
                                         "expected_frr": chk.expected_frr, "loo_accuracy": chk.loo_accuracy,
                                         "ranked_by": chk.ranked_by}
    if json_out:
        print_json({"model": res.model, "gallery": str(res.gallery), "added": res.added,
                    "already_enrolled": res.already_enrolled,
                    "failed": [{"path": str(f.path), "error": f.reason} for f in res.failures],
                    "images": res.total, "low_confidence": res.low_confidence,
                    "threshold": res.threshold,
                    "decision": decision,
                    "warnings": warnings})
        return
    console.print(f"enrolled [bold]{literal(res.model)}[/bold]: {res.added} new image(s), {res.already_enrolled} "
                  f"already enrolled, {len(res.failures)} unreadable; {res.total} image(s) in total -> "
                  f"{literal(res.gallery)}", markup=True)
    if res.low_confidence:
        warn(f"{res.low_confidence} image(s) were smaller than the extractor's window and were mirror-padded "
             "(low confidence)")
    if res.total < 10:
        warn(f"{res.model} has {res.total} image(s); 10 or more make a much more reliable fingerprint")
    if rates:
        console.print(rates, markup=False)
    if chk is None:
        console.print("gallery check skipped (--no-check): `fpt gallery calibrate` reports the expected error "
                      "rates and the models this extractor cannot tell apart", markup=False)
    for w in warnings:
        warn(w)


def render_identifications(results: Sequence[Any], failed: Sequence[Any], g: Any, src: str, *, top_k: int,
                           decision: Mapping[str, Any], fmt: str = "table") -> None:
    """``fpt identify``'s results as a table, JSON (``fmt="json"``) or CSV on stdout (``"csv"``)."""
    if fmt == "json":
        _print_identify_json(results, failed, g, src, decision)
    elif fmt == "csv":
        _write_identify_csv(results, failed, top_k)
    else:
        _print_identify_table(results, failed, g, src, top_k)


def _print_identify_json(results: Sequence[Any], failed: Sequence[Any], g: Any, src: str, decision: Mapping[str, Any]) -> None:
    from fpt.attribution import failure_record, identification_record

    by_lr = results[0].min_log10_lr is not None
    coh = decision["cohort"]
    n_unknown = sum(not r.identified for r in results)
    print_json({"gallery": str(g.path), "decision": src, "min_log10_lr": decision["min_log10_lr"] if by_lr else None,
                "lr_from": decision["lr_from"], "ranked_by": results[0].ranked_by, "threshold": results[0].threshold,
                "threshold_source": src, "cohort": str(coh.path) if coh is not None else None,
                "results": [identification_record(r) for r in results],
                "failed": [failure_record(f.path, f.reason) for f in failed],
                "summary": {"images": len(results), "identified": len(results) - n_unknown,
                            "unknown": n_unknown, "failed": len(failed)}})


def _write_identify_csv(results: Sequence[Any], failed: Sequence[Any], top_k: int) -> None:
    t_used = results[0].threshold
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "model", "score", "score_norm", "log10_lr", "verbal", "best_model", "low_confidence",
                "threshold"] + [f"top{i + 1}_{c}" for i in range(top_k) for c in ("model", "score")])

    def num(v) -> str:
        return "" if v is None else f"{v:.6f}"

    for r in results:
        tops = [x for m, s in r.top for x in (m, f"{s:.6f}")]
        w.writerow([r.path, r.model, f"{r.score:.6f}", num(r.score_norm), num(r.log10_lr), r.verbal or "",
                    r.best_model, int(r.low_confidence), num(t_used)] + tops)
    for f in failed:
        w.writerow([str(f.path), "error", "", "", "", "", "", "", ""])
    sys.stdout.write(buf.getvalue())


def _print_identify_table(results: Sequence[Any], failed: Sequence[Any], g: Any, src: str, top_k: int) -> None:
    from fpt.calibration import verbal_level

    by_lr, t_used = results[0].min_log10_lr is not None, results[0].threshold
    nd = score_digits(t_used, *(r.score for r in results))
    table = Table(title=f"identification against {g.path.name} ({len(g.models)} models)",
                  caption=(f"decision: {src}" if by_lr else
                           (f"threshold {t_used:.{nd}f} ({src})" if t_used is not None else "no threshold")))
    any_low = any(r.low_confidence for r in results)
    table.add_column("image", overflow="fold")
    table.add_column("model", overflow="fold")
    table.add_column("log10 LR", justify="right", no_wrap=True)
    table.add_column("support (ENFSI)", overflow="fold")
    table.add_column("cosine", justify="right", no_wrap=True)
    whitened = results[0].ranked_by == "whitened"
    table.add_column(f"top-{min(top_k, len(g.models))} (cosine" + (", w)" if whitened else ")"),
                     no_wrap=True)
    if any_low:
        table.add_column("low-conf")
    for r in results:
        tops = "\n".join(f"{visible(m)} {s:.{nd}f}" + (f" (w {r.top_rank[i]:.{nd}f})" if whitened else "")
                          for i, (m, s) in enumerate(r.top))
        decided = visible(r.model) if r.identified else Text("unknown", style="red")
        cells = [visible(str(r.path)), decided, format_lr(r.log10_lr),
                 "-" if r.log10_lr is None else verbal_level(r.log10_lr),
                 f"{r.score:.{nd}f}", tops] + (["yes" if r.low_confidence else ""] if any_low else [])
        table.add_row(*cells)
    console.print(table)
    if len(results) > 1 or failed:
        from collections import Counter

        cnt = Counter(r.model for r in results)
        console.print(f"{len(results)} image(s): " + ", ".join(f"{m} {n}" for m, n in cnt.most_common())
                      + (f"; {len(failed)} unreadable" if failed else ""), markup=False)
    if whitened:
        console.print("models are ranked by their whitened score w (cosine after a whitening fitted on the "
                      "gallery's own images); the decision reads the first model's raw cosine", markup=False)
    if by_lr:
        console.print("LR = how many times more probable the image's fingerprint is if the named model made "
                      "it than if another model did; support words from the ENFSI verbal scale "
                      "(docs/calibration.md)", markup=False)


def render_verification(v: Any) -> None:
    """``fpt verify``'s verdict lines (a fpt.attribution.Verification)."""
    verdict = "[green]same model[/green]" if v.same_model else "[red]different models[/red]"
    nd = score_digits(v.similarity, v.threshold)
    console.print(f"log10 LR {format_lr(v.log10_lr)}: {v.verbal or 'no LR calibration'} -> {verdict}", markup=True)
    norm = "" if v.score_norm is None else f", normalised {v.score_norm:.3f}"
    console.print(f"cosine {v.similarity:.{nd}f}{norm} (A: {v.n_a} image(s), B: {v.n_b} image(s))")
    console.print(f"decision: {v.threshold_source}" + (f" (threshold {v.threshold:.{nd}f})" if v.threshold is not None else ""),
                  markup=False)
    if v.low_confidence:
        console.print("[yellow]low confidence: some images were smaller than the extractor's window[/yellow]",
                      markup=True)
