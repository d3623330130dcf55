"""Identify / verify / lineage on embeddings: pure functions over arrays and a Gallery.

Scores are cosine similarities of unit-norm embeddings (paper 001 §IV-A): an image is attributed
to the enrolled model whose fingerprint (mean embedding) is closest, or to *unknown* when the best
score is below the gallery's calibrated threshold.

Ranking (``rank="whitened"``, the default) first whitens with the within-model covariance of the
gallery's own enrolled images (:class:`GalleryRanking`), so the directions in which one model's
images vary with their content count less than those that separate the enrolled models; the
accept / reject decision and the likelihood ratio still read the raw cosine of the ranked-first
model, whose calibration (leave-one-out on the gallery) the whitening would bias.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterator

import numpy as np

from fpt.calibration import DEFAULT_MIN_LOG10_LR, LogisticCalibration
from fpt.cohort import Cohort
from fpt.errors import InputError
from fpt.gallery import DEFAULT_FAR, Gallery, leave_one_out_scores, model_blocks
from fpt.metrics.identification import whitened_fingerprints
from fpt.metrics.verification import best_accuracy, cosine_matrix, l2_normalise, set_pairs, threshold_at_far
from fpt.metrics.within_class import WithinClassWhitening, can_whiten

UNKNOWN = "unknown"


@dataclass
class Identification:
    path: str | None
    model: str  # best model, or "unknown"
    score: float  # best model's raw cosine similarity
    best_model: str  # best model even when rejected
    top: list[tuple[str, float]]  # top-k (model, raw cosine), best first
    threshold: float | None  # raw-cosine threshold when the decision used one
    low_confidence: bool = False
    score_norm: float | None = None  # best model's cohort-normalised score (None without a cohort)
    log10_lr: float | None = None  # best model's calibrated log10 likelihood ratio
    verbal: str | None = None  # ENFSI verbal scale of log10_lr
    min_log10_lr: float | None = None  # the LR level the decision used (None: a raw threshold did)
    top_norm: list[float] = field(default_factory=list)  # aligned with ``top``
    top_log10_lr: list[float] = field(default_factory=list)
    ranked_by: str = "cosine"  # what ordered ``top``: cosine | whitened | cohort
    top_rank: list[float] = field(default_factory=list)  # the ranking scores, when not the raw cosine

    @property
    def identified(self) -> bool:
        return self.model != UNKNOWN


def identification_record(r: Identification) -> dict:
    """The JSON record of one identified image: ``fpt identify --json`` results and ``--jsonl`` lines.

    The one place that decides a result's fields, so the two outputs cannot drift apart.
    """
    rec: dict = {"path": r.path, "model": r.model, "best_model": r.best_model, "score": r.score,
                 "score_norm": r.score_norm, "log10_lr": r.log10_lr, "verbal": r.verbal,
                 "low_confidence": r.low_confidence, "ranked_by": r.ranked_by}
    rec["top"] = [{"model": m, "score": s,
                   "score_norm": r.top_norm[i] if i < len(r.top_norm) else None,
                   "log10_lr": r.top_log10_lr[i] if i < len(r.top_log10_lr) else None,
                   "rank_score": r.top_rank[i] if i < len(r.top_rank) else None}
                  for i, (m, s) in enumerate(r.top)]
    return rec


def failure_record(path: str | Path, reason: str) -> dict:
    """The JSON record of a file that could not be used (``failed`` entries, error lines of a scan)."""
    return {"path": str(path), "error": reason}


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Columns of the ``k`` highest scores of each row, best first (ties: lower column first).

    A partial sort (O(models) per row) instead of a full one: with 10^5 models the full argsort,
    not the matrix product, was most of identify's cost.
    """
    n = scores.shape[1]
    if k >= n:
        return np.argsort(-scores, axis=1, kind="stable")[:, :k]
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(scores, part, axis=1)
    out = np.take_along_axis(part, np.lexsort((part, -vals), axis=-1), axis=1)
    # argpartition picks any of the columns tied with the k-th score: where more columns hold it
    # than were picked, the row is sorted in full (rare for cosines, common for shares of images)
    for r in np.flatnonzero(np.sum(scores >= vals.min(axis=1)[:, None], axis=1) > k):
        out[r] = np.argsort(-scores[r], kind="stable")[:k]
    return out


def _model_images(g: Gallery) -> int:
    """Typical enrolled images per model: picks the LR calibration fitted for that fingerprint size."""
    return int(np.median([m.count for m in g.models.values()])) if g.models else 1


LR_SOURCES = ("gallery", "cohort")

#: how a gallery ranks its models: after its own within-model whitening, or by raw cosine
RANKINGS = ("whitened", "cosine")
#: shrinkage of the gallery's ranking whitening (relative to the mean eigenvalue of its
#: within-model covariance), chosen on held-out synthetic architectures: docs/extractor-v2.md §10
GALLERY_WHITENING_SHRINKAGE = 1.0


def rank_shrinkage(rank: str) -> float | None:
    """The within-model whitening shrinkage a ranking uses (None: raw cosine)."""
    if rank not in RANKINGS:
        raise InputError(f"ranking must be one of {', '.join(RANKINGS)}, not '{rank}'")
    return GALLERY_WHITENING_SHRINKAGE if rank == "whitened" else None


@dataclass(frozen=True)
class GalleryRanking:
    """Ranking scores after a within-model whitening fitted on the gallery's own enrolled images:
    the cosine of the whitened probe with each model's whitened fingerprint (the mean of its
    whitened images). ``fingerprints`` follow ``g.names()``."""

    whitening: WithinClassWhitening
    fingerprints: np.ndarray  # (models, D)

    @cached_property
    def _unit_fingerprints(self) -> np.ndarray:
        # normalised once, not per call: the gallery check scores one model's images at a time
        return l2_normalise(self.fingerprints.astype(np.float64))

    def scores(self, emb: np.ndarray) -> np.ndarray:
        x = self.whitening.apply(emb).astype(np.float64)
        # float64 then rounded, as the raw scores are: a probe's scores must not depend on its batch
        return (l2_normalise(np.atleast_2d(x)) @ self._unit_fingerprints.T).astype(np.float32)


def _fit_ranking(emb: np.ndarray, labels: np.ndarray, shrinkage: float) -> GalleryRanking:
    # classes come back sorted, i.e. in g.names() order
    w, _, fps = whitened_fingerprints(emb, labels, shrinkage)
    return GalleryRanking(w, fps.astype(np.float32))


def gallery_ranking(g: Gallery, shrinkage: float = GALLERY_WHITENING_SHRINKAGE) -> GalleryRanking | None:
    """The gallery's whitened ranking, or None when it cannot fit one (fewer than 2 models with
    2+ enrolled images: then models are ranked by raw cosine)."""
    emb, labels = gallery_embeddings(g)
    if not can_whiten(labels):
        return None
    return _fit_ranking(emb, labels.astype(str), shrinkage)


#: folds of the gallery check's held-out estimate under the whitened ranking
CHECK_FOLDS = 5


@dataclass(frozen=True)
class HeldOutRanking:
    """The whitened ranking as it would score each enrolled image from a gallery without it.

    Exact leave-one-out would refit the whitening once per image, so the images of each model with
    2+ images are dealt into folds (its j-th image to fold j mod ``folds``) and ``rankings[f]``
    is fitted on the other folds: no image is scored by a whitening that has seen it, at the price
    of a gallery smaller by a fold (slightly pessimistic). Models with one image are never left out,
    so every model keeps a fingerprint in every fold.
    """

    emb: np.ndarray  # (images, D) every enrolled embedding, in gallery_embeddings() order
    starts: np.ndarray  # (models + 1,) model k (g.names() order) is rows starts[k]:starts[k + 1]
    fold: np.ndarray  # (images,) fold of each enrolled image; -1: kept (single-image models)
    rankings: list[GalleryRanking]

    def scores(self, rows: np.ndarray) -> np.ndarray:
        """Held-out ranking scores (len(rows), models) of the enrolled images ``rows`` (none of them kept)."""
        fold = self.fold[rows]
        if np.any(fold < 0):
            raise ValueError("images of single-image models are never held out")
        out = np.empty((len(rows), len(self.starts) - 1), np.float32)
        for f in np.unique(fold):
            out[fold == f] = self.rankings[f].scores(self.emb[rows[fold == f]])
        return out

    def per_model(self, block: int = 1024) -> Iterator[tuple[int, np.ndarray]]:
        """``(model index, held-out scores of its images)`` for every model with 2+ images, in
        order. Scored about ``block`` images at a time: one call per model would cost a few numpy
        calls per fold per model, and all at once an images x models matrix."""
        starts = self.starts
        for lo, hi in model_blocks(np.diff(starts), block):
            rows = np.arange(starts[lo], starts[hi])
            held = self.fold[rows] >= 0
            scores = np.full((rows.size, len(starts) - 1), np.nan, np.float32)
            scores[held] = self.scores(rows[held])
            for k in range(lo, hi):
                if starts[k + 1] - starts[k] >= 2:
                    yield k, scores[starts[k] - starts[lo]:starts[k + 1] - starts[lo]]


def held_out_ranking(g: Gallery, shrinkage: float = GALLERY_WHITENING_SHRINKAGE,
                     folds: int = CHECK_FOLDS) -> HeldOutRanking | None:
    """Fit :class:`HeldOutRanking`; None when a fold leaves too few images to fit the whitening."""
    emb, labels = gallery_embeddings(g)
    labels = labels.astype(str)
    counts = np.array([g.models[n].count for n in g.names()])
    starts = np.r_[0, np.cumsum(counts)]
    within = np.arange(len(labels)) - np.repeat(starts[:-1], counts)  # index of each image in its model
    fold = np.where(np.repeat(counts, counts) >= 2, within % folds, -1)
    rankings = []
    for f in range(folds):
        kept = fold != f
        if not can_whiten(labels[kept]):
            return None
        rankings.append(_fit_ranking(emb[kept], labels[kept], shrinkage))
        # every model keeps an image outside each fold, so the fingerprints follow g.names()
        assert rankings[-1].fingerprints.shape[0] == len(g.models)
    return HeldOutRanking(emb, starts, fold, rankings)


def gallery_lr_calibration(g: Gallery, scores: tuple[np.ndarray, np.ndarray] | None = None
                           ) -> LogisticCalibration | None:
    """Logistic raw-cosine -> log10 LR map fitted on the gallery's own leave-one-out trials.

    Targets: each enrolled image against its model's fingerprint rebuilt without it; non-targets:
    its best score against the other models (the "not enrolled" case). In-domain for the
    gallery's generators, and never fitted on the probes being judged. None when the gallery
    cannot supply both kinds of trial (fewer than two models, or no model with 2+ images).
    ``scores`` = (genuine, impostor) of :func:`fpt.gallery.calibration_scores`, for callers that
    already computed them.
    """
    from fpt.calibration import fit_logistic
    from fpt.gallery import calibration_scores

    if len(g.models) < 2:
        return None
    gen, imp = scores if scores is not None else calibration_scores(g)[:2]
    if gen.size < 2 or imp.size < 2:
        return None
    return fit_logistic(gen, imp)


def identify_embeddings(g: Gallery, emb: np.ndarray, *, top_k: int = 3, threshold: float | None = None,
                        paths: list[str | None] | None = None, low_confidence: np.ndarray | None = None,
                        cohort: Cohort | None = None, min_log10_lr: float = DEFAULT_MIN_LOG10_LR,
                        lr_from: str = "gallery",
                        fingerprints: tuple[list[str], np.ndarray] | None = None,
                        lr_calibration: LogisticCalibration | None = None, rank: str = "whitened",
                        ranking: GalleryRanking | None = None) -> list[Identification]:
    """Rank the gallery's models for each row of ``emb`` and decide model or unknown.

    ``lr_from="gallery"``: models are ranked by raw cosine and the LR comes from
    :func:`gallery_lr_calibration`. ``lr_from="cohort"``: ranked by the adaptive-S-normalised
    score against ``cohort`` (plus the gallery's other models), LR from the cohort's calibration.
    A probe is attributed when its best model's log10 LR reaches ``min_log10_lr``. An explicit
    raw-cosine ``threshold`` overrides the LR decision (LRs are still reported); with no LR
    available the gallery's calibrated raw threshold decides (if it has none, every probe is
    attributed to its best model and the caller should warn). The normalised score is reported
    whenever a calibrated cohort is given. With ``lr_from="gallery"``, ``rank="whitened"`` orders
    the models by :class:`GalleryRanking` scores instead of raw cosine (when the gallery can fit
    one); the decision and the LR still read the ranked-first model's raw cosine.
    ``fingerprints`` (``g.fingerprint_matrix()``), ``lr_calibration``
    (:func:`gallery_lr_calibration`) and ``ranking`` (:func:`gallery_ranking`) are computed once
    by callers that identify chunk after chunk: they depend on the gallery only.
    """
    from fpt.calibration import normalised_scores, verbal_scale

    if lr_from not in LR_SOURCES:
        raise InputError(f"LR source must be one of {', '.join(LR_SOURCES)}, not '{lr_from}'")
    names, fps = fingerprints if fingerprints is not None else g.fingerprint_matrix()
    if not names:
        raise InputError("the gallery has no models", path=g.path, hint="enroll some: fpt enroll MODEL IMAGES...")
    emb = np.atleast_2d(np.asarray(emb, np.float32))
    if emb.shape[1] != fps.shape[1]:
        raise InputError(f"embeddings have {emb.shape[1]} dims, gallery fingerprints {fps.shape[1]}", path=g.path)
    has_cohort = cohort is not None and cohort.calibration is not None
    # float64 then rounded to float32: a float32 matrix product rounds differently with the number
    # of probes (BLAS picks other kernels), and a probe's score must not depend on which probes it
    # was scored with (chunked --jsonl scans, torchrun ranks and --json must agree to the bit)
    sims = cosine_matrix(emb.astype(np.float64), fps.astype(np.float64)).astype(np.float32)
    norm = normalised_scores(emb, fps, cohort.fingerprints(), cohort.calibration.top_n)[1] if has_cohort else None
    shrinkage = rank_shrinkage(rank)
    lrs, order_by, ranked_by = None, sims, "cosine"
    if lr_from == "cohort" and has_cohort:
        order_by, ranked_by = norm, "cohort"
        lrs = cohort.calibration.for_sizes(1, _model_images(g)).log10_lr(norm)
    elif lr_from == "gallery":
        cal = lr_calibration if lr_calibration is not None else gallery_lr_calibration(g)
        lrs = cal.log10_lr(sims) if cal is not None else None
        if shrinkage is not None:
            rk = ranking if ranking is not None else gallery_ranking(g, shrinkage)
            if rk is not None:
                order_by, ranked_by = rk.scores(emb), "whitened"
    use_lr = lrs is not None and threshold is None
    t = None if use_lr else (threshold if threshold is not None else (g.calibration.threshold if g.calibration else None))
    k = max(1, min(top_k, len(names)))
    order = top_k_indices(order_by, k)
    out = []
    for i in range(emb.shape[0]):
        top = [(names[j], float(sims[i, j])) for j in order[i]]
        best, score = top[0]
        r = Identification(path=None if paths is None else paths[i], model=best, score=score, best_model=best,
                           top=top, threshold=t,
                           low_confidence=bool(low_confidence[i]) if low_confidence is not None else False,
                           ranked_by=ranked_by)
        if ranked_by == "whitened":
            r.top_rank = [float(order_by[i, j]) for j in order[i]]
        if norm is not None:
            r.top_norm = [float(norm[i, j]) for j in order[i]]
            r.score_norm = r.top_norm[0]
        if lrs is not None:
            r.top_log10_lr = [float(lrs[i, j]) for j in order[i]]
            r.log10_lr = r.top_log10_lr[0]
            r.verbal = verbal_scale(r.log10_lr, f"'{best}'", "another model")
        if use_lr:
            r.min_log10_lr = float(min_log10_lr)
            if r.log10_lr < min_log10_lr:
                r.model = UNKNOWN
        elif t is not None and score < t:
            r.model = UNKNOWN
        out.append(r)
    return out


@dataclass
class Verification:
    similarity: float  # raw cosine of the two set fingerprints
    same_model: bool
    threshold: float | None  # raw-cosine threshold when the decision used one
    threshold_source: str  # "--threshold", "gallery (FAR 0.05, N_S=5)", "cohort LR >= 10", ...
    n_a: int
    n_b: int
    low_confidence: bool = False
    score_norm: float | None = None
    log10_lr: float | None = None
    verbal: str | None = None
    min_log10_lr: float | None = None


def set_fingerprint(emb: np.ndarray) -> np.ndarray:
    """Normalised mean of unit embeddings: the fingerprint of a set of N_S images (paper 000 §5)."""
    return l2_normalise(l2_normalise(np.atleast_2d(emb)).mean(axis=0))


def verify_embeddings(a: np.ndarray, b: np.ndarray, threshold: float | None, source: str = "--threshold",
                      low_confidence: bool = False, cohort: Cohort | None = None,
                      min_log10_lr: float = DEFAULT_MIN_LOG10_LR, lr_from: str = "gallery",
                      gallery_calibration: LogisticCalibration | None = None) -> Verification:
    """Same model or not, from the fingerprints of image sets ``a`` and ``b``.

    The LR comes from ``gallery_calibration`` (raw cosine; see :func:`verify_lr_calibration`) or,
    with ``lr_from="cohort"``, from the cohort's calibration of the S-normalised score. It
    decides (``log10 LR >= min_log10_lr``) unless a raw ``threshold`` is given.
    """
    from fpt.calibration import verbal_scale, verification_scores

    fa, fb = set_fingerprint(a), set_fingerprint(b)
    n_a, n_b = len(np.atleast_2d(a)), len(np.atleast_2d(b))
    s = float(np.dot(fa, fb))
    v = Verification(s, bool(threshold is not None and s >= threshold), None if threshold is None else float(threshold),
                     source, n_a, n_b, low_confidence)
    if cohort is not None and cohort.calibration is not None:
        _, norm = verification_scores(fa[None, :], fb[None, :], cohort.fingerprints(), cohort.calibration.top_n)
        v.score_norm = float(norm[0])
        if lr_from == "cohort":
            v.log10_lr = float(cohort.calibration.for_sizes(min(n_a, n_b), max(n_a, n_b)).log10_lr(norm)[0])
    if lr_from == "gallery" and gallery_calibration is not None:
        v.log10_lr = float(gallery_calibration.log10_lr(np.array([s]))[0])
    if v.log10_lr is not None:
        v.verbal = verbal_scale(v.log10_lr)
        if threshold is None:
            v.min_log10_lr = float(min_log10_lr)
            v.same_model = v.log10_lr >= min_log10_lr
    elif threshold is None:
        raise InputError("verification needs a threshold or a likelihood-ratio calibration",
                         hint="enroll 2+ models into the gallery, or pass --threshold")
    return v


@dataclass
class VerifyCalibration:
    threshold: float
    n_s: int
    far: float
    expected_far: float
    expected_frr: float
    pairs: int


def _gallery_set_pairs(g: Gallery, n_s: int, n_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Scores of balanced genuine / impostor set pairs (``n_s`` images a side, capped at what the
    gallery can supply) built from the enrolled embeddings: ``(scores, same, n_s used)``."""
    emb, labels = gallery_embeddings(g)
    if len(set(labels)) < 2:
        raise InputError("verification calibration needs a gallery with 2+ models", path=g.path,
                         hint="enroll more models or pass --threshold")
    counts = {n: int(np.sum(labels == n)) for n in set(labels)}
    n_eff = max(1, min(n_s, max(counts.values()) // 2))
    rng = np.random.default_rng(seed)
    A, B, same = set_pairs(labels, n_eff, n_pairs, rng)
    e = l2_normalise(emb)
    fa = l2_normalise(e[A].mean(axis=1))
    fb = l2_normalise(e[B].mean(axis=1))
    return np.sum(fa * fb, axis=1), same, n_eff


def verify_threshold(g: Gallery, n_s: int, far: float = DEFAULT_FAR, n_pairs: int = 2000,
                     seed: int = 0) -> VerifyCalibration:
    """Threshold for set-vs-set verification with ``n_s`` images a side, from the gallery's images.

    Builds balanced genuine / impostor set pairs from the enrolled embeddings (models with fewer
    than ``2 * n_s`` images give only impostor sides) and takes the threshold at ``far``.
    ``n_s`` is capped at what the gallery can supply.
    """
    s, same, n_eff = _gallery_set_pairs(g, n_s, n_pairs, seed)
    t = threshold_at_far(s, same, far=far)
    return VerifyCalibration(float(t), n_eff, far, float(np.mean(s[~same] >= t)), float(np.mean(s[same] < t)),
                             int(n_pairs))


def verify_lr_calibration(g: Gallery, n_s: int, n_pairs: int = 2000, seed: int = 0
                          ) -> tuple[LogisticCalibration, int]:
    """Logistic raw-cosine -> log10 LR map for ``n_s``-image sets, fitted on the gallery's set pairs."""
    from fpt.calibration import fit_logistic

    s, same, n_eff = _gallery_set_pairs(g, n_s, n_pairs, seed)
    return fit_logistic(s[same], s[~same]), n_eff


@dataclass
class ModelConfusion:
    model: str
    other: str
    share: float  # of ``model``'s images that rank ``other`` at least as high as their own model (held out)
    fingerprint_cosine: float
    accepted_share: float | None = None  # of ``model``'s images ``other`` would take if ``model`` were not enrolled

    @property
    def ranked_apart(self) -> bool:
        """Flagged only for the open-set decision: ranking tells the two apart while both are enrolled."""
        return self.share < CONFUSED_SHARE


@dataclass
class GalleryCheck:
    """What an analyst should know about a gallery, from leave-one-out scoring of its own images.

    With a cohort the rates are at the LR decision level (``min_log10_lr``); without one at the
    gallery's raw calibrated threshold (``None`` if it has none).
    """

    rule: str  # "lr" or "raw"
    level: float | None  # log10 LR level or raw threshold
    expected_far: float | None  # images scored as if their model were not enrolled, accepted
    expected_frr: float | None  # images rejected against their own (leave-one-out) model
    loo_accuracy: float | None  # top-1 of the enrolled images, each ranked by a gallery without it
    disagreeing: dict[str, tuple[int, int]] = field(default_factory=dict)  # model -> (rejected, images)
    confusions: list[ModelConfusion] = field(default_factory=list)
    ranked_by: str = "cosine"  # the ranking behind loo_accuracy and the confusion shares
    confused_pairs: int = 0  # (model, other) pairs flagged; ``confusions`` keeps the worst few per model
    kept_per_model: int = 0  # how many: CONFUSIONS_PER_MODEL


#: a model is flagged as possibly mixed when this share of its own images is rejected against it
MIXED_SHARE = 0.25
#: two models are flagged as not separable when this share of one's images prefers the other
CONFUSED_SHARE = 0.25
#: flagged pairs kept per model, worst first: an extractor that separates nothing in a gallery of
#: 10^4 models would otherwise flag 10^8 pairs
CONFUSIONS_PER_MODEL = 3


def check_gallery(g: Gallery, cohort: Cohort | None = None, min_log10_lr: float = DEFAULT_MIN_LOG10_LR,
                  lr_from: str = "gallery", rank: str = "whitened") -> GalleryCheck:
    """Leave-one-out over the enrolled images: expected FAR / FRR at the decision rule, plus the
    models whose own images disagree (likely mixed sources) and pairs of models that this
    extractor does not separate.

    Top-1 accuracy and the confusion shares are measured under ``rank``, the ranking
    :func:`identify_embeddings` uses: whitened by :func:`held_out_ranking` (cross-fitted
    folds), raw cosine by exact leave-one-out (also when the folds cannot fit a whitening).
    """
    from fpt.calibration import cohort_stats, normalised_scores

    names, fps = g.fingerprint_matrix()
    use_cohort = lr_from == "cohort" and cohort is not None and cohort.calibration is not None
    gal_cal = gallery_lr_calibration(g) if lr_from == "gallery" else None
    use_lr = use_cohort or gal_cal is not None
    cfp = cohort.fingerprints() if use_cohort else None
    cal = cohort.calibration.for_sizes(1, max(1, _model_images(g) - 1)) if use_cohort else None
    top_n = cohort.calibration.top_n if use_cohort else 0
    level = float(min_log10_lr) if use_lr else (g.calibration.threshold if g.calibration else None)
    shrinkage = rank_shrinkage(rank)
    held = held_out_ranking(g, shrinkage) if shrinkage is not None and len(names) >= 2 else None
    gen_all, imp_all, ok_all = [], [], []
    out = GalleryCheck("lr" if use_lr else "raw", level, None, None, None,
                       ranked_by="cosine" if held is None else rank, kept_per_model=CONFUSIONS_PER_MODEL)
    fps64 = fps.astype(np.float64) if use_cohort else None
    held_rows = held.per_model() if held is not None else None
    for s in leave_one_out_scores(g):
        mi, name, e, raw = s.index, names[s.index], s.emb, s.raw
        # columns follow g.names(); the model's own column is set to -inf (the own score is s.own),
        # so that maxima, shares and flags run over the other models without copying them out
        raw[:, mi] = -np.inf
        if use_cohort:
            others = np.delete(fps64, mi, axis=0)
            ext_p = np.hstack([e @ cfp.T, np.delete(raw, mi, axis=1)])
            ext_m = np.hstack([s.loo @ cfp.T, s.loo @ others.T])
            ps, ms = cohort_stats(ext_p, top_n), cohort_stats(ext_m, top_n)
            gen = cal.log10_lr(0.5 * ((s.own - ps.mean) / ps.std + (s.own - ms.mean) / ms.std))
            norm = normalised_scores(e, others, cfp, top_n)[1] if others.shape[0] else np.zeros((len(e), 0))
            other_scores = np.insert(cal.log10_lr(norm), mi, -np.inf, axis=1)
        else:
            gen, other_scores = s.own, raw
            if gal_cal is not None:
                gen, other_scores = gal_cal.log10_lr(gen), gal_cal.log10_lr(raw)
                other_scores[:, mi] = -np.inf
        best_other = other_scores.max(axis=1)
        if held is None:
            rank_own, rank_other = s.own, raw
        else:
            k, rows = next(held_rows)
            assert k == mi  # both walk the models with 2+ images in g.names() order
            rank_own, rank_other = rows[:, mi].copy(), rows
            rank_other[:, mi] = -np.inf
        gen_all.append(gen)
        imp_all.append(best_other)
        ok_all.append(rank_own > rank_other.max(axis=1))
        if level is not None:
            rejected = int(np.sum(gen < level))
            if rejected and rejected >= MIXED_SHARE * len(e):
                out.disagreeing[name] = (rejected, len(e))
        share = np.mean(rank_other >= rank_own[:, None], axis=0)
        taken = None if level is None else np.mean(other_scores >= level, axis=0)
        flagged = share >= CONFUSED_SHARE
        if taken is not None:
            flagged |= taken >= CONFUSED_SHARE
        flagged[mi] = False
        flagged = np.flatnonzero(flagged)
        out.confused_pairs += int(flagged.size)
        worst = np.maximum(share, taken) if taken is not None else share
        # a partial sort: in a gallery this extractor cannot separate, every other model is flagged
        for j in flagged[top_k_indices(worst[flagged][None, :], CONFUSIONS_PER_MODEL)[0]]:
            out.confusions.append(ModelConfusion(name, names[j], float(share[j]), float(np.dot(fps[mi], fps[j])),
                                                 None if taken is None else float(taken[j])))
    if gen_all:
        gen, imp, ok = np.concatenate(gen_all), np.concatenate(imp_all), np.concatenate(ok_all)
        # with one model enrolled every image is "identified": no accuracy to report
        out.loo_accuracy = float(np.mean(ok)) if len(names) >= 2 else None
        if level is not None:
            out.expected_frr = float(np.mean(gen < level))
            if len(names) >= 2:
                out.expected_far = float(np.mean(imp >= level))
    return out


def gallery_embeddings(g: Gallery) -> tuple[np.ndarray, np.ndarray]:
    names = g.names()
    if not names:
        return np.zeros((0, g.embedding_dim or 0), np.float32), np.zeros(0, dtype=object)
    emb = np.concatenate([g.models[n].embeddings for n in names])
    labels = np.concatenate([np.full(g.models[n].count, n, dtype=object) for n in names])
    return emb, labels


# ---------------------------------------------------------------- lineage


@dataclass
class Lineage:
    names: list[str]
    linkage: np.ndarray  # scipy linkage matrix (cosine distance, average linkage)
    distances: np.ndarray = field(repr=False)  # condensed cosine distances

    def text_tree(self) -> str:
        """Indented tree, one leaf per line; internal nodes show the cosine distance of the merge."""
        from scipy.cluster.hierarchy import to_tree

        if len(self.names) == 1:
            return self.names[0]
        root = to_tree(self.linkage)
        lines: list[str] = []

        def walk(node, prefix: str, last: bool, top: bool) -> None:
            branch = "" if top else ("└── " if last else "├── ")
            if node.is_leaf():
                lines.append(f"{prefix}{branch}{self.names[node.id]}")
                return
            lines.append(f"{prefix}{branch}┐ d={node.dist:.4g}")
            child_prefix = prefix + ("" if top else ("    " if last else "│   "))
            kids = [node.get_left(), node.get_right()]
            for i, kid in enumerate(kids):
                walk(kid, child_prefix, i == len(kids) - 1, False)

        walk(root, "", True, True)
        return "\n".join(lines)

    def plot(self, out: str | Path, title: str = "fpt lineage (cosine distance, average linkage)") -> Path:
        from scipy.cluster.hierarchy import dendrogram

        from fpt.report import pyplot, save_figure

        plt = pyplot()
        fig, ax = plt.subplots(figsize=(8, max(2.5, 0.35 * len(self.names) + 1)))
        dendrogram(self.linkage, labels=self.names, orientation="right", ax=ax, color_threshold=None)
        ax.set_xlabel("cosine distance between fingerprints (1 - cosine similarity)" if "cosine" in title
                      else "cohort-normalised distance (0 = the most similar pair)")
        ax.set_title(title)
        return save_figure(fig, out)


def lineage(names: list[str], fingerprints: np.ndarray, cohort_fps: np.ndarray | None = None,
            top_n: int | None = None) -> Lineage:
    """Average-linkage hierarchical clustering of fingerprints under cosine distance (paper 001 §IV-D).

    With ``cohort_fps`` the similarity is the symmetric adaptive S-norm of fingerprint pairs
    against the cohort, rescaled to a [0, 1] distance (0 = the most similar pair).
    """
    from scipy.cluster.hierarchy import linkage as _linkage
    from scipy.spatial.distance import pdist, squareform

    if len(names) < 2:
        raise InputError("lineage needs at least two models", hint="enroll more models")
    fp = l2_normalise(np.asarray(fingerprints, np.float64))
    if cohort_fps is None:
        d = np.clip(pdist(fp, metric="cosine"), 0.0, 2.0)
    else:
        from fpt.calibration import DEFAULT_TOP_N, normalised_scores

        _, norm = normalised_scores(fp, fp, cohort_fps, top_n or DEFAULT_TOP_N, include_models=False)
        sim = squareform(0.5 * (norm + norm.T), checks=False)
        span = max(float(sim.max() - sim.min()), 1e-12)
        d = (sim.max() - sim) / span
    return Lineage(list(names), _linkage(d, method="average"), d)


__all__ = ["UNKNOWN", "Identification", "identification_record", "failure_record", "identify_embeddings", "top_k_indices",
           "RANKINGS", "GALLERY_WHITENING_SHRINKAGE", "rank_shrinkage", "GalleryRanking", "gallery_ranking",
           "CHECK_FOLDS", "HeldOutRanking", "held_out_ranking",
           "Verification", "verify_embeddings",
           "GalleryCheck", "ModelConfusion", "CONFUSIONS_PER_MODEL", "check_gallery", "gallery_lr_calibration", "verify_lr_calibration",
           "LR_SOURCES",
           "set_fingerprint", "VerifyCalibration", "verify_threshold", "gallery_embeddings", "Lineage",
           "lineage", "best_accuracy"]
