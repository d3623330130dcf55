"""Case reports as one self-contained HTML file, and as JSON — part of the report layer (fpt/report.py).

Renders a :class:`fpt.casefile.CaseFile`. The HTML embeds its figures as base64 PNG data URIs
(matplotlib through :func:`fpt.report.pyplot`) and its style sheet inline; it links to nothing
outside itself and runs no JavaScript, so it opens offline in any browser and prints as it shows.

Why string building and no template engine: the document is one fixed layout of tables, lists
and figures, a few hundred lines of markup. A template engine (Jinja2) would add a dependency
and a second language for that, and its auto-escaping would be the only real gain; here every
user-supplied or file-derived string (paths, model names, errors, command lines) goes through
:func:`html.escape` in the one helper :func:`_e`, and numbers are formatted by
:func:`fpt.report.format_value`.
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from fpt.casefile import CaseFile, Curve, Evidence, ProbeRecord, ScoreDistributions, case_to_dict
from fpt.report import format_value, pyplot, to_jsonable

#: Figure resolution: enough to read axis labels on screen and in print, small enough that a
#: report of a few probes stays well under a megabyte or two.
DPI = 80
NOT_AVAILABLE = "not available"


def _e(value: Any) -> str:
    """Escaped text of any value (user strings are shown literally, never as markup)."""
    return html.escape(value if isinstance(value, str) else format_value(value), quote=True)


def _num(value: float | None, digits: int = 4) -> str:
    return NOT_AVAILABLE if value is None else _e(format_value(float(value), digits))


def _pct(value: float | None) -> str:
    return NOT_AVAILABLE if value is None else f"{100 * value:.1f} %"


def _png(fig: Any, alt: str, caption: str = "") -> str:
    """``<figure>`` with the figure embedded as a base64 PNG data URI (and a caption); closes the figure."""
    from PIL import Image

    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)  # every figure is laid out already (tight_layout)
    plt.close(fig)
    # A 256-colour palette keeps spectra and plots visually identical and the PNGs ~3x smaller
    # (noisy colour-mapped spectra compress badly in true colour).
    buf.seek(0)
    with Image.open(buf) as im:
        small = io.BytesIO()
        im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(small, "PNG", optimize=True)
    data = base64.b64encode(small.getvalue()).decode("ascii")
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return f'<figure><img class="fig" alt="{_e(alt)}" src="data:image/png;base64,{data}">{cap}</figure>'


# ---------------------------------------------------------------- figures


def topk_figure(p: ProbeRecord) -> Any:
    """Horizontal bars of the top-k cosine scores, the threshold as a dashed line."""
    plt = pyplot()
    d = p.decision
    assert d is not None
    names = [c.model for c in d.top][::-1]
    scores = [c.score for c in d.top][::-1]
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * len(names) + 1.2))
    colours = ["#2b7a3d" if (d.identified and n == d.model) else "#8a8f98" for n in names]
    ax.barh(range(len(names)), scores, color=colours)
    ax.set_yticks(range(len(names)), [str(n) for n in names])
    lo = min(0.0, min(scores) - 0.05)
    ax.set_xlim(lo, 1.0)
    if d.threshold is not None:
        ax.axvline(d.threshold, color="#b3261e", ls="--", lw=1.2, label=f"threshold {d.threshold:.4g}")
        ax.legend(loc="lower right", fontsize=8)
    ax.axvline(0, color="black", lw=0.6)
    ax.set_xlabel("cosine similarity to the model's fingerprint")
    ax.set_title(f"top-{len(names)} candidate models" + (", ranked by whitened score" if d.ranked_by == "whitened" else ""))
    fig.tight_layout()
    return fig


def ai_figure(ev: Evidence) -> Any:
    """The probe's azimuthal integral against the attributed model's and the runner-up's means."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for c, st in ((ev.probe_ai, dict(color="black", lw=1.6)), (ev.model_ai, dict(color="#2b7a3d", lw=1.2)),
                  (ev.runner_up_ai, dict(color="#8a5cc2", lw=1.2, ls="--"))):
        if c.available:
            ax.semilogy(c.freq[1:], c.values[1:], label=c.label, **st)  # type: ignore[index]
    if not (ev.model_ai.available or ev.runner_up_ai.available):
        ax.text(0.5, 0.04, "model means not available (see the notes below)", transform=ax.transAxes,
                ha="center", fontsize=8, color="grey")
    ax.axvline(0.25, color="grey", ls=":", lw=0.8)
    ax.set_xlabel("ring radius (cycles/px)")
    ax.set_ylabel("azimuthal integral (Eq. 12)")
    ax.set_title("residual spectrum, azimuthal integral")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def score_figure(dist: ScoreDistributions, score: float, threshold: float | None) -> Any:
    """The gallery's genuine / impostor leave-one-out score histograms with the probe's score."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    w = np.diff(dist.bins)
    ax.bar(dist.bins[:-1], dist.genuine_hist, width=w, align="edge", alpha=0.55, color="#2b7a3d",
           label=f"genuine: image vs own model ({dist.genuine.size})")
    ax.bar(dist.bins[:-1], dist.impostor_hist, width=w, align="edge", alpha=0.55, color="#b3261e",
           label=f"impostor: image vs best other model ({dist.impostor.size})")
    ax.axvline(score, color="black", lw=2, label=f"this probe {score:.4g}")
    if threshold is not None:
        ax.axvline(threshold, color="#b3261e", ls="--", lw=1.2, label=f"threshold {threshold:.4g}")
    ax.set_xlim(-1, 1)
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("gallery images")
    ax.set_title("probe score against the gallery's own score distributions")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- HTML pieces

CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:#1c1d20;max-width:1100px;margin:24px auto;
padding:0 18px;line-height:1.4}
h1{font-size:1.6em;margin-bottom:0.1em}h2{border-bottom:2px solid #d0d4da;padding-bottom:3px;margin-top:1.6em}
h3{margin-bottom:0.3em}
table{border-collapse:collapse;margin:6px 0 12px}td,th{border:1px solid #d0d4da;padding:3px 8px;text-align:left;
vertical-align:top}th{background:#f1f3f5}
table.kv th{width:15em}
code,.mono{font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:0.9em;word-break:break-all}
pre{background:#f6f8fa;border:1px solid #d0d4da;padding:8px;white-space:pre-wrap;overflow-wrap:anywhere}
.verdict{font-size:1.3em;font-weight:bold;padding:6px 10px;border-radius:4px;display:inline-block}
.ok{background:#e3f3e6;color:#1d5c2c}.unknown{background:#fbe9e7;color:#8c1d18}.err{color:#8c1d18}
.warn{background:#fff6d6;border-left:4px solid #d9a400;padding:4px 8px;margin:4px 0}
.na{color:#6b7079;font-style:italic}
.probe{border:1px solid #d0d4da;border-radius:6px;padding:4px 16px 12px;margin:18px 0;page-break-inside:avoid}
.figs{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}img.fig{max-width:100%;height:auto}
.small{font-size:0.85em;color:#4a4f57}
figure{margin:0;display:table}figcaption{display:table-caption;caption-side:bottom;font-size:0.8em;color:#4a4f57;
margin:2px 0 8px}
"""


def _kv(rows: list[tuple[str, str]]) -> str:
    """Two-column table; values are already escaped HTML."""
    body = "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def _na(text: str = NOT_AVAILABLE) -> str:
    return f'<span class="na">{_e(text)}</span>'


def _record(case: CaseFile) -> str:
    r = case.record
    cal = r.calibration
    cal_html = (_e(f"threshold {cal.threshold:.6g} at FAR {cal.far:g} (open-set, leave-one-out on the gallery's "
                   f"{cal.n_genuine} genuine / {cal.n_impostor} impostor scores; expected false-reject rate "
                   f"{cal.expected_frr:.1%}, leave-one-out accuracy {cal.loo_accuracy:.1%}), calibrated {cal.date}")
                if cal else _na("not calibrated"))
    if r.threshold_used is not None:
        thr = _e(f"{r.threshold_used:.6g} ({r.threshold_source})")
    elif r.threshold_source.startswith("log10 LR"):  # decided on the likelihood ratio, not a cosine threshold
        thr = _e(r.threshold_source)
    else:
        thr = _na("none: every probe is attributed to its best model")
    models = ", ".join(f"{_e(n)} ({c})" for n, c in r.gallery_models.items())
    rows = [
        ("date (UTC)", _e(r.date)),
        ("fpt version", _e(r.fpt_version)),
        ("extractor file", f'<span class="mono">{_e(r.extractor_path)}</span>' if r.extractor_path else _na()),
        ("extractor SHA-256", f'<span class="mono">{_e(r.extractor_sha256)}</span>'),
        ("extractor", _e(r.extractor_description) + (" <b>(the weights shipped with fpt)</b>"
                                                     if r.extractor_is_shipped else "")),
        ("gallery file", f'<span class="mono">{_e(r.gallery_path)}</span>'),
        ("gallery SHA-256", f'<span class="mono">{_e(r.gallery_sha256)}</span>'),
        ("gallery last changed", _e(r.gallery_updated) if r.gallery_updated else _na()),
        ("enrolled models (images)", models),
        ("calibration", cal_html),
        ("decision threshold", thr),
        ("command line", f'<span class="mono">{_e(" ".join(r.command_line))}</span>' if r.command_line else _na()),
        ("platform", _e(r.platform)),
    ]
    return "<h2>Examination record</h2>" + _kv(rows)


def _summary(case: CaseFile) -> str:
    rows = []
    for i, p in enumerate(case.probes, 1):
        if p.error is not None:
            res = f'<span class="err">unreadable: {_e(p.error)}</span>'
            score = lr = ""
        else:
            d = p.decision
            assert d is not None
            cls = "ok" if d.identified else "unknown"
            res = f'<span class="verdict {cls}" style="font-size:1em">{_e(d.model)}</span>'
            score = _num(d.score)
            lr = _na() if d.log10_lr is None else _lr_text(d.log10_lr, d.verbal)
        sha = f'<span class="mono">{_e(p.sha256)}</span>' if p.sha256 else _na()
        rows.append(f'<tr><td><a href="#probe-{i}">{i}</a></td>'
                    f'<td class="mono" style="white-space:nowrap">{_e(p.name)}</td><td>{sha}</td>'
                    f"<td>{res}</td><td>{score}</td><td>{lr}</td></tr>")
    n_err = len(case.failed)
    head = (f"<p>{len(case.probes)} probe file(s) examined"
            + (f", <b>{n_err} could not be read</b> (listed with their error)" if n_err else "") + ".</p>")
    return ("<h2>Summary</h2>" + head + "<table><tr><th>#</th><th>file</th><th>SHA-256</th><th>decision</th>"
            "<th>score</th><th>log10 LR (verbal)</th></tr>" + "".join(rows) + "</table>")


def _lr_text(log10_lr: float | None, verbal: str | None) -> str:
    if log10_lr is None:
        return _na(f"{NOT_AVAILABLE} (no likelihood-ratio calibration for this gallery)")
    return _e(f"{log10_lr:+.2f}") + (f" ({_e(verbal)})" if verbal else "")


def _curve_note(c: Curve) -> str:
    return f"<li>{_e(c.label)}: " + (_e(c.note) if c.available else _na(c.note)) + "</li>"


def _probe(i: int, p: ProbeRecord, case: CaseFile) -> str:
    out = [f'<div class="probe" id="probe-{i}"><h3>Probe {i}: <span class="mono">{_e(p.name)}</span></h3>']
    size = f"{p.width} x {p.height} px" if p.width is not None else None
    facts = [
        ("path as given", f'<span class="mono">{_e(p.path)}</span>'),
        ("file size", _e(f"{p.size_bytes:,} bytes") if p.size_bytes is not None else _na()),
        ("format", _e(p.format) if p.format else _na()),
        ("SHA-256", f'<span class="mono">{_e(p.sha256)}</span>' if p.sha256 else _na()),
        ("dimensions", _e(size) if size else _na()),
    ]
    out.append(_kv(facts))
    if p.error is not None:
        out.append(f'<p class="err"><b>Not examined:</b> {_e(p.error)}</p></div>')
        return "".join(out)
    for w in p.warnings:
        out.append(f'<div class="warn">warning: {_e(w)}</div>')
    d, ev = p.decision, p.evidence
    assert d is not None and ev is not None
    if d.identified:
        verdict = f'<span class="verdict ok">attributed to {_e(d.model)}</span>'
    else:
        verdict = (f'<span class="verdict unknown">unknown</span> <span class="small">best candidate '
                   f"{_e(d.best_model)} scored below the decision level</span>")
    thr = (_num(d.threshold, 6) if d.threshold is not None
           else _na("none: decided on the likelihood ratio" if d.log10_lr is not None else "none"))
    out.append("<h4>Decision</h4><p>" + verdict + "</p>")
    out.append(_kv([
        ("score (cosine)", _num(d.score, 6)),
        ("threshold", thr),
        ("log10 likelihood ratio", _na(f"{NOT_AVAILABLE} (no likelihood-ratio calibration for this gallery)")
         if d.log10_lr is None else _e(f"{d.log10_lr:+.3f}")),
        ("verbal scale (ENFSI)", _na() if d.verbal is None else _e(d.verbal)),
        ("score among the gallery's own genuine scores",
         _e(f"higher than {_pct(ev.scores.genuine_below)} of them") if ev.scores.genuine_below is not None else _na()),
        ("impostor scores at or above it (empirical false-accept rate)", _pct(ev.scores.impostor_at_or_above)),
    ]))
    whitened = d.ranked_by == "whitened"
    top = "".join(f"<tr><td>{k}</td><td>{_e(c.model)}</td>"
                  + (f"<td>{_num(c.rank_score, 6)}</td>" if whitened else "") + f"<td>{_num(c.score, 6)}</td></tr>"
                  for k, c in enumerate(d.top, 1))
    out.append("<table><tr><th>rank</th><th>model</th>" + ("<th>whitened score (ranks)</th>" if whitened else "")
               + f"<th>cosine</th></tr>{top}</table>")
    if whitened:
        out.append("<p>Models are ranked by their whitened score: the cosine after a whitening fitted on the "
                   "gallery's own enrolled images, which discounts what varies between images of one model. "
                   "The decision and the likelihood ratio read the first model's raw cosine.</p>")
    out.append('<div class="figs">'
               + _png(topk_figure(p), "top-k bar chart",
                      "Cosine similarity of the probe's embedding to each enrolled model's fingerprint; at or above "
                      "the dashed threshold the best model is attributed, below it the answer is unknown.")
               + _png(score_figure(case.distributions, d.score, d.threshold), "score distributions",
                      "The gallery's own images scored leave-one-out: green against their own model (what a "
                      "correct attribution looks like), red against the best other model (what an image of a "
                      "model that is not enrolled looks like). Black: this probe's best score.")
               + "</div>")
    out.append("<h4>Spectral evidence</h4>")
    peaks = ", ".join(f"{_e(g.label)} x{g.strength:.0f}" for g in ev.peaks[:8]) or "none above threshold 10"
    out.append(_kv([("residual", _e(ev.residual)), ("HP ratio (Eq. 13)", _num(ev.hp_ratio)),
                    ("grid peaks (fy, fx) x strength", peaks)]))
    figs = []
    if ev.spectrum is not None:
        from fpt.spectrum.analysis import spectrum_figure

        figs.append(_png(spectrum_figure(ev.spectrum, f"{p.name} — {ev.residual} residual", ev.peaks),
                         "log spectrum with grid peaks",
                         "Left: power spectrum of the probe's noise residual (DC centred); circles mark grid peaks "
                         "at fractions of the sampling rate, the periodic traces of up-sampling. Middle: its "
                         "azimuthal integral. Right: the residual's autocorrelation."))
    figs.append(_png(ai_figure(ev), "azimuthal integral against model means",
                     "The probe's azimuthal integral against the mean over the enrolled images of the attributed "
                     "(or best) model and of the runner-up, where those image files are available."))
    out.append('<div class="figs">' + "".join(figs) + "</div>")
    out.append("<ul class=\"small\">" + _curve_note(ev.probe_ai) + _curve_note(ev.model_ai)
               + _curve_note(ev.runner_up_ai) + "</ul>")
    out.append("</div>")
    return "".join(out)


def render_case_html(case: CaseFile) -> str:
    """The whole report as one HTML document (UTF-8 text)."""
    r = case.record
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>fpt case report {_e(r.date)}</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>fpt case report: which generative model made these images?</h1>",
        f'<p class="small">Generated {_e(r.date)} by fpt {_e(r.fpt_version)}. This file is self-contained: figures '
        "are embedded and it loads nothing from outside.</p>",
        _summary(case),
        _record(case),
        "<h2>Findings per probe</h2>",
        *(_probe(i, p, case) for i, p in enumerate(case.probes, 1)),
        "<h2>Limitations</h2><ul>" + "".join(f"<li>{_e(t)}</li>" for t in case.limitations) + "</ul>",
        "<h2>How to reproduce</h2><p>With fpt " + _e(r.fpt_version) + ", the same gallery and extractor "
        "(check their SHA-256 above):</p>",
        "<pre>" + _e("\n".join(case.reproduce)) + "</pre>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def case_json(case: CaseFile) -> Any:
    """The report's content as JSON-ready data (figure-only arrays left out)."""
    return to_jsonable(case_to_dict(case))


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically, keeping an existing file's mode and a symlink's target."""
    from fpt.storage import atomic_path

    target = Path(os.path.realpath(path)) if Path(path).is_symlink() else Path(path)
    mode = target.stat().st_mode & 0o7777 if target.exists() else None
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
        if mode is not None:
            os.chmod(tmp, mode)
    return target


__all__ = ["render_case_html", "case_json", "write_text_atomic", "topk_figure", "ai_figure", "score_figure"]
