"""Case files: everything a forensic report on one or more probe images must state (``fpt report``).

:func:`build_case` gathers, for a set of probe images examined against one gallery with one
extractor:

- the examination record (UTC date, fpt version, extractor file and sha256, gallery file, sha256
  and calibration, the command line, the platform);
- per probe: file facts (name, size, format, SHA-256, dimensions), input warnings (small image,
  JPEG compression), the decision (model or unknown, score, top-k; a log10 likelihood ratio and
  its verbal scale where one is supplied), and the evidence arrays (residual spectrum with grid
  peaks, the azimuthal integral against the enrolled models' mean spectra, the probe's score
  against the gallery's own genuine / impostor score distributions);
- limitations in plain words and the commands that reproduce the examination.

It reuses the library throughout (:mod:`fpt.images` to load, :mod:`fpt.extractor.embed` to embed,
:mod:`fpt.attribution` to decide, :mod:`fpt.spectrum.analysis` for spectra, :mod:`fpt.gallery` for the
calibration scores) and returns dataclasses; rendering (HTML, JSON) is the report layer's job
(:mod:`fpt.report_html`). Pure: no printing, no rich / typer.
"""

from __future__ import annotations

import io
import platform
import os
import shlex
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fpt import __version__
from fpt.spectrum.analysis import SpectrumArrays, analyse_paths, analyse_tensor, resolve_residual
from fpt.attribution import UNKNOWN, gallery_lr_calibration, identify_embeddings
from fpt.errors import EmptyInputError, InputError
from fpt.extractor.embed import EmbedFailure, ExtractorLike, ImageEmbedding, iter_embeddings
from fpt.gallery import Gallery, calibration_scores, load_gallery, now_iso
from fpt.images import FileFacts, LoadFailure, file_facts, find_images, iter_images
from fpt.spectrum import GridPeak
from fpt.storage import file_sha256

#: Residual used for the spectral evidence: the extractor's own default (``fpt spectrum``'s too).
EVIDENCE_RESIDUAL = "highpass"
#: README "How well does it work?" — measured with the shipped extractor on the developers'
#: reference generators. Shown only when the case used that extractor (other weights: unknown).
README_WEAK_SPOTS = (
    "Modern text-to-image models are the weak spot: over five of them (latent diffusion, Stable Diffusion 1.4, "
    "Hunyuan-DiT, PixArt-alpha, VQGAN+CLIP) 5-shot identification was 57 % (10-shot 70 %), and models whose "
    "decoders are alike (Hunyuan-DiT and PixArt-alpha: Stable-Diffusion-family VAEs) are often confused.",
    "Among 8 real generators, 10-shot identification was 90 %; LDM (64 %), Stable Diffusion 1.4 (78 %) and "
    "StyleGAN2 (89 %) are often confused with each other.",
    "JPEG-recompressed web thumbnails are attributed much less reliably (verification AUC 0.75 from one image "
    "per side, 0.94 from five, against 0.96 / 0.99 on clean PNG output).",
    "For images smaller than the 64 px window (28 px MNIST models) the plain spectrum baseline did better than "
    "fpt (10-shot identification 0.87 vs 0.71, measured with 3 x 3 windows per image).",
    "The open-set threshold calibrated at 5 % false accepts is strict: in that evaluation many images of enrolled "
    "models came back unknown (open-set accuracy 0.65). 'Unknown' means 'not confidently attributed', not proof "
    "that no enrolled model made the image.",
)
#: Histogram bins for the score distributions (cosine similarity range).
SCORE_BINS = np.linspace(-1.0, 1.0, 81)


# ---------------------------------------------------------------- dataclasses


@dataclass
class Calibrated:
    """The gallery's open-set calibration as stored in it (:class:`fpt.gallery.Calibration`)."""

    far: float
    threshold: float
    date: str
    expected_far: float
    expected_frr: float
    loo_accuracy: float
    n_genuine: int
    n_impostor: int


@dataclass
class ExaminationRecord:
    date: str  # UTC, ISO-8601
    fpt_version: str
    extractor_path: str | None
    extractor_sha256: str
    extractor_description: str  # what it is and what it was trained on, from the checkpoint
    extractor_is_shipped: bool  # the default weights the README's evaluation used
    gallery_path: str
    gallery_sha256: str
    gallery_updated: str
    gallery_models: dict[str, int]  # model -> enrolled images
    calibration: Calibrated | None
    threshold_used: float | None
    threshold_source: str  # "calibrated", "--threshold", "none"
    command_line: list[str]
    platform: str


@dataclass
class Candidate:
    model: str
    score: float  # raw cosine to the model's fingerprint
    rank_score: float | None = None  # the whitened score that ranked it (None: ranked by cosine)


@dataclass
class Decision:
    model: str  # attributed model or "unknown"
    identified: bool
    score: float  # best cosine similarity
    best_model: str  # best model even when below the threshold
    threshold: float | None
    top: list[Candidate]
    # A calibrated likelihood ratio where the decision layer provides one (fpt.calibration);
    # None means "not available" and every renderer says so.
    log10_lr: float | None = None
    verbal: str | None = None
    ranked_by: str = "cosine"  # fpt.attribution.Identification.ranked_by


@dataclass
class Curve:
    """An azimuthal integral: ``values`` against ring radius ``freq`` (cycles/px)."""

    label: str
    freq: np.ndarray | None = None
    values: np.ndarray | None = None
    images: int = 0  # how many images went into a model mean
    note: str = ""  # why it is not available, or which files were used

    @property
    def available(self) -> bool:
        return self.values is not None


@dataclass
class ScoreContext:
    """Where the probe's best score falls in the gallery's own leave-one-out score distributions."""

    score: float
    genuine_below: float | None  # share of genuine (own-model) scores below the probe's score
    impostor_at_or_above: float | None  # share of impostor scores >= it: empirical false-accept rate


@dataclass
class Evidence:
    residual: str
    hp_ratio: float
    peaks: list[GridPeak]
    probe_ai: Curve
    model_ai: Curve  # attributed model (or best candidate when unknown)
    runner_up_ai: Curve
    scores: ScoreContext
    # Full residual spectrum for the figure only: too big and too specific for the JSON.
    spectrum: SpectrumArrays | None = field(default=None, repr=False, metadata={"json": False})


@dataclass
class ProbeRecord:
    path: str
    name: str
    size_bytes: int | None
    sha256: str | None
    format: str | None
    width: int | None
    height: int | None
    warnings: list[str] = field(default_factory=list)
    error: str | None = None  # set when the file could not be examined
    decision: Decision | None = None
    evidence: Evidence | None = None


@dataclass
class ScoreDistributions:
    """The gallery's leave-one-out calibration scores (:func:`fpt.gallery.calibration_scores`)."""

    genuine: np.ndarray = field(metadata={"json": False})
    impostor: np.ndarray = field(metadata={"json": False})
    bins: np.ndarray = field(default_factory=lambda: SCORE_BINS.copy())
    genuine_hist: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    impostor_hist: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __post_init__(self) -> None:
        self.genuine_hist = np.histogram(np.clip(self.genuine, -1, 1), self.bins)[0]
        self.impostor_hist = np.histogram(np.clip(self.impostor, -1, 1), self.bins)[0]

    def context(self, score: float) -> ScoreContext:
        g, i = self.genuine, self.impostor
        return ScoreContext(float(score), float(np.mean(g < score)) if g.size else None,
                            float(np.mean(i >= score)) if i.size else None)


@dataclass
class CaseFile:
    record: ExaminationRecord
    probes: list[ProbeRecord]
    distributions: ScoreDistributions
    limitations: list[str]
    reproduce: list[str]

    @property
    def failed(self) -> list[ProbeRecord]:
        return [p for p in self.probes if p.error is not None]


def case_to_dict(obj: Any) -> Any:
    """Dataclasses -> dicts, leaving out fields marked ``metadata={"json": False}`` (figure-only
    arrays). Values stay numpy; :func:`fpt.report.to_jsonable` finishes the job."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: case_to_dict(getattr(obj, f.name)) for f in fields(obj) if f.metadata.get("json", True)}
    if isinstance(obj, (list, tuple)):
        return [case_to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: case_to_dict(v) for k, v in obj.items()}
    return obj


# ---------------------------------------------------------------- probe file facts


def input_warnings(facts: FileFacts, low_confidence: bool, window: int) -> list[str]:
    out = []
    if low_confidence:
        out.append(f"small image: {facts.width}x{facts.height} px is smaller than the extractor's {window} px window; "
                   "it was mirror-padded and its fingerprint is low-confidence")
    elif facts.width is not None and min(facts.width, facts.height or 0) < 2 * window:
        out.append(f"small image: {facts.width}x{facts.height} px gives only overlapping {window} px windows; "
                   "fingerprints of small images are less reliable")
    if facts.jpeg_quality is not None:
        q, exact = facts.jpeg_quality
        out.append(f"JPEG-compressed (quality {'' if exact else '~'}{q}{'' if exact else ', non-IJG tables'}): "
                   "generators write lossless output, so this file was compressed after generation at least once "
                   "and its fingerprint is weakened; fpt cannot tell from the file whether it was compressed more "
                   "than once")
    return out


# ---------------------------------------------------------------- model reference spectra


def _resolve_enrolled(path: str, gallery_dir: Path) -> Path | None:
    """An enrolled image's path as stored (as given at enrolment), tried as-is then beside the gallery."""
    p = Path(path)
    for cand in ([p] if p.is_absolute() else [p, gallery_dir / p]):
        try:
            if cand.is_file():
                return cand
        except OSError:
            continue
    return None


def model_mean_curve(g: Gallery, model: str, label: str, max_images: int = 64) -> Curve:
    """Azimuthal integral of ``model``'s mean residual spectrum over its enrolled images.

    Only files still at their enrolled path *with the enrolled SHA-256* are used (up to
    ``max_images``, evenly spread), so the curve is of the very images the fingerprint was made of.
    """
    m = g.get(model)
    found, missing, changed = [], 0, 0
    for p, h in zip(m.paths, m.hashes):
        q = _resolve_enrolled(p, g.path.parent)
        if q is None:
            missing += 1
        elif file_sha256(q) != h:
            changed += 1
        else:
            found.append(q)
    if not found:
        why = [f"{missing} not on this machine"] if missing else []
        why += [f"{changed} changed since enrolment (SHA-256 differs)"] if changed else []
        return Curve(label, note=f"not available: none of the {m.count} enrolled image files can be used "
                                 f"({', '.join(why) or 'no images'})")
    if len(found) > max_images:
        found = [found[i] for i in np.linspace(0, len(found) - 1, max_images).round().astype(int)]
    fs = analyse_paths(found, residual=EVIDENCE_RESIDUAL)
    if not fs.images:
        return Curve(label, note="not available: none of the enrolled image files could be decoded")
    a = fs.mean_arrays
    note = f"mean spectrum of {len(fs.images)} enrolled image(s), {fs.crop} px centre crop"
    if missing or changed:
        note += f"; {missing} missing and {changed} changed file(s) left out"
    return Curve(label, a.ai_freq, a.ai, len(fs.images), note)


# ---------------------------------------------------------------- record, limitations, reproduce


def describe_extractor(ex: ExtractorLike) -> str:
    """One paragraph from the checkpoint's own record: network, preprocessing, training data."""
    cfg = getattr(ex, "config", None) or {}
    pre = ex.preprocessing
    parts = []
    net = getattr(getattr(ex, "net", None), "config", None) or {}
    if net:
        parts.append(f"{net.get('backbone', '?')} network, {ex.embedding_dim}-d embedding")
    parts.append(f"{getattr(pre, 'residual', '?')} residual, {pre.crop_size} px windows "
                 f"({getattr(pre, 'windows', 3)}x{getattr(pre, 'windows', 3)} per image)")
    if cfg.get("untrained"):
        parts.append("UNTRAINED placeholder weights")
    elif cfg:
        n_models = cfg.get("train_models") or (cfg.get("source") or {}).get("models")
        n_real = cfg.get("real_images")
        imgs = cfg.get("images")
        trained = "trained only on synthetic generative models built by fpt"
        if n_models:
            trained += f" ({n_models} models"
            trained += f" applied to {n_real} real photos" if n_real else ""
            trained += f" from {', '.join(map(str, imgs))})" if imgs else ")"
        parts.append(trained + "; it has never seen the generators it is used on")
        val = cfg.get("validation") or {}
        if "auc" in val:
            parts.append(f"validation on held-out synthetic architectures: verification AUC {val['auc']:.3f}"
                         + (f", 10-shot identification {val['id_acc_10shot']:.2f}" if "id_acc_10shot" in val else ""))
    else:
        parts.append("no training record in the checkpoint")
    return "; ".join(parts)


def _shipped_sha() -> str | None:
    from fpt.extractor.checkpoint import default_extractor_path

    p = default_extractor_path()
    return file_sha256(p) if p.is_file() else None


def limitations_for(record: ExaminationRecord, g: Gallery, probes: list[ProbeRecord]) -> list[str]:
    out = [
        "An image is attributed to the closest model enrolled in this gallery. A model that is not enrolled can "
        "only come back unknown or be mistaken for a similar enrolled one"
        + (f": at the calibrated threshold about {record.calibration.expected_far:.1%} of images from models that are "
           "not enrolled were accepted in the gallery's own leave-one-out test." if record.calibration else "."),
        f"The extractor: {record.extractor_description}.",
    ]
    if record.extractor_is_shipped:
        out += ["Measured with this extractor (README, 'How well does it work?'): " + s for s in README_WEAK_SPOTS]
    else:
        out.append("This is not the extractor shipped with fpt: the README's evaluation does not apply to it and fpt "
                   "holds no evaluation of it.")
    if record.calibration is None:
        out.append("The gallery is not calibrated (it needs 2+ models with 2+ images): no probe can come back unknown, "
                   "every probe is attributed to its best-scoring model.")
    small = [f"{n} ({c})" for n, c in sorted(record.gallery_models.items()) if c < 10]
    if small:
        out.append(f"Models with fewer than 10 enrolled images have unreliable fingerprints: {', '.join(small)}.")
    if any(p.error is None and any(w.startswith("JPEG") for w in p.warnings) for p in probes):
        out.append("Some probes are JPEG files: compression after generation weakens every fingerprint.")
    if any(p.error is None and any(w.startswith("small image") for w in p.warnings) for p in probes):
        out.append("Some probes are small: their spectra hold few frequency bins and their scores are less reliable.")
    if any(p.decision is not None and p.decision.log10_lr is not None for p in probes):
        out.append("Likelihood ratios are only as reliable as the calibration data behind them: they describe how "
                   "this gallery's own images scored, not every generator that exists.")
    else:
        out.append("No likelihood ratio is reported (not available for this gallery): a cosine score alone is not "
                   "a measure of evidential strength.")
    return out


def reproduce_commands(record: ExaminationRecord, probe_args: Sequence[str], top_k: int,
                       threshold: float | None) -> list[str]:
    q = shlex.quote
    files = " ".join(q(p) for p in probe_args)
    ex = f" --extractor {q(record.extractor_path)}" if record.extractor_path else ""
    thr = f" --threshold {threshold!r}" if threshold is not None else ""
    g = q(record.gallery_path)
    cmds = [
        f"cd {q(os.getcwd())}",
        f"# check the inputs are the examined ones (SHA-256 above): gallery {record.gallery_sha256[:12]}, "
        f"extractor {record.extractor_sha256[:12]}",
        f"sha256sum {g}" + (f" {q(record.extractor_path)}" if record.extractor_path else ""),
        f"fpt identify {files} --gallery {g}{ex} --top-k {top_k}{thr} --json",
        f"fpt spectrum {files} --residual {EVIDENCE_RESIDUAL}",
        f"fpt report {files} --gallery {g}{ex} --top-k {top_k}{thr} --out case.html",
    ]
    return cmds


def _platform() -> str:
    return (f"{platform.platform()}; Python {platform.python_version()}; torch {torch.__version__}; "
            f"numpy {np.__version__}")


# ---------------------------------------------------------------- the case


def build_case(
    probes: Sequence[str | Path],
    gallery: str | Path | Gallery,
    extractor: ExtractorLike,
    *,
    top_k: int = 5,
    threshold: float | None = None,
    windows: int | None = None,
    batch_size: int = 64,
    max_reference: int = 64,
    command_line: Sequence[str] = (),
    likelihood_ratio: Callable[[str, float], tuple[float, str | None] | None] | None = None,
    on_total: Callable[[int], None] | None = None,
    on_done: Callable[[Path], None] | None = None,
) -> CaseFile:
    """Examine ``probes`` (files and/or folders) against ``gallery`` with ``extractor``.

    ``likelihood_ratio(model, score)``, where the decision layer has a calibrated one, returns
    ``(log10 LR, verbal scale)`` for the best model's score (or None); without it the report says
    "not available".

    Unreadable probes are kept in the case with their error. Raises :class:`InputError` for an
    empty gallery, :class:`fpt.errors.ExtractorMismatchError` when the gallery was built with
    another extractor, :class:`EmptyInputError` when no probe at all can be read.
    """
    g = gallery if isinstance(gallery, Gallery) else load_gallery(gallery)
    if not g.models:
        raise InputError("the gallery has no models", path=g.path, hint="fpt enroll MODEL IMAGES...")
    files = find_images(probes)
    g.check_extractor(extractor.sha256)
    if on_total:
        on_total(len(files))
    ex_path = getattr(extractor, "path", None)
    cal = g.calibration
    t_used = threshold if threshold is not None else (cal.threshold if cal else None)
    record = ExaminationRecord(
        date=now_iso(), fpt_version=__version__,
        extractor_path=str(Path(ex_path).resolve()) if ex_path else None, extractor_sha256=extractor.sha256,
        extractor_description=describe_extractor(extractor),
        extractor_is_shipped=extractor.sha256 == _shipped_sha(),
        gallery_path=str(g.path.resolve()), gallery_sha256=file_sha256(g.path), gallery_updated=g.updated,
        gallery_models={n: g.models[n].count for n in g.names()},
        calibration=Calibrated(cal.far, cal.threshold, cal.date, cal.expected_far, cal.expected_frr, cal.loo_accuracy,
                               cal.n_genuine, cal.n_impostor) if cal else None,
        threshold_used=t_used,
        threshold_source="--threshold" if threshold is not None else ("calibrated" if cal else "none"),
        command_line=list(command_line), platform=_platform(),
    )
    gen, imp, _ = calibration_scores(g)
    dist = ScoreDistributions(gen, imp)

    # One decode per probe: the spectral analysis taps the stream that feeds the extractor.
    residual = resolve_residual(EVIDENCE_RESIDUAL, torch.device("cpu"))
    spectra: dict[Path, Any] = {}

    def tapped() -> Iterator[tuple[Path, torch.Tensor | LoadFailure]]:
        for p, img in iter_images(files):
            if not isinstance(img, LoadFailure):
                rep = analyse_tensor(img, residual, path=p, keep_arrays=True)[0]
                # The figure shows the channel mean: keep only that until rendering (a third of the memory).
                rep.arrays = replace(rep.arrays, power=rep.arrays.power.mean(0, keepdims=True))
                spectra[p] = rep
            yield p, img

    results: list[ImageEmbedding | EmbedFailure] = list(
        iter_embeddings(extractor, files, windows=windows, batch_size=batch_size, on_done=on_done, loaded=tapped()))
    ok = [r for r in results if isinstance(r, ImageEmbedding)]
    if not ok:
        raise EmptyInputError(f"none of the {len(results)} probe image(s) could be read",
                              hint="; ".join(r.reason for r in results[:3]))  # type: ignore[union-attr]
    ids = identify_embeddings(g, np.stack([r.embedding for r in ok]), top_k=top_k, threshold=threshold,
                              paths=[str(r.path) for r in ok],
                              lr_calibration=gallery_lr_calibration(g, (gen, imp)))  # the scores above, once
    by_path = {r.path: i for r, i in zip(ok, ids)}
    if ids[0].min_log10_lr is not None:  # the decision layer decided on its calibrated likelihood ratio
        record.threshold_used = None
        record.threshold_source = (f"log10 LR >= {ids[0].min_log10_lr:g} (likelihood ratio calibrated on the "
                                   "gallery's own enrolled images, leave-one-out)")
    window = int(extractor.preprocessing.crop_size)
    curves: dict[str, Curve] = {}  # one mean spectrum per model, however many probes need it

    def curve(model: str, label: str) -> Curve:
        if model not in curves:
            curves[model] = model_mean_curve(g, model, model, max_reference)
        return replace(curves[model], label=f"{label}: {model}")

    records = []
    for r in results:
        facts = file_facts(Path(r.path))
        pr = ProbeRecord(path=str(r.path), name=Path(r.path).name, size_bytes=facts.size_bytes, sha256=facts.sha256,
                         format=facts.format, width=facts.width, height=facts.height)
        if isinstance(r, EmbedFailure):
            pr.error = r.reason
            records.append(pr)
            continue
        pr.warnings = input_warnings(facts, r.low_confidence, window)
        d = by_path[r.path]
        pr.decision = Decision(model=d.model, identified=d.identified, score=d.score, best_model=d.best_model,
                               threshold=d.threshold, ranked_by=d.ranked_by,
                               top=[Candidate(m, s, d.top_rank[i] if d.top_rank else None)
                                    for i, (m, s) in enumerate(d.top)])
        if likelihood_ratio is not None:
            lr = likelihood_ratio(d.best_model, d.score)
        else:  # the LR the decision itself used, where the gallery has one
            lr = (d.log10_lr, d.verbal) if d.log10_lr is not None else None
        if lr is not None:
            pr.decision.log10_lr, pr.decision.verbal = float(lr[0]), lr[1]
        spec = spectra.pop(r.path)
        a = spec.arrays
        first = "attributed model" if d.identified else "best candidate (below threshold)"
        runner = curve(d.top[1][0], "runner-up") if len(d.top) > 1 else Curve("runner-up", note="not available: "
                                                                              "the gallery has one model")
        pr.evidence = Evidence(
            residual=EVIDENCE_RESIDUAL, hp_ratio=spec.hp_ratio, peaks=spec.peaks,
            probe_ai=Curve("probe", a.ai_freq, a.ai, 1, f"{spec.width}x{spec.height} px"),
            model_ai=curve(d.best_model, first), runner_up_ai=runner,
            scores=dist.context(d.score), spectrum=a)
        records.append(pr)
    limitations = limitations_for(record, g, records)
    reproduce = reproduce_commands(record, [str(p) for p in probes], top_k, threshold)
    return CaseFile(record, records, dist, limitations, reproduce)


__all__ = ["CaseFile", "ExaminationRecord", "Calibrated", "ProbeRecord", "Decision", "Candidate", "Evidence",
           "Curve", "ScoreContext", "ScoreDistributions", "build_case", "case_to_dict", "input_warnings",
           "model_mean_curve", "describe_extractor", "UNKNOWN"]
