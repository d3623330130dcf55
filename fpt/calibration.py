"""The decision layer: cohort, score normalisation, likelihood ratios (DESIGN.md §4).

Raw cosine scores between a probe and a model fingerprint have a scale that differs from model to
model and probe to probe, so one threshold cannot serve them all. Speaker-recognition practice
fixes both halves of that:

- **Cohort score normalisation.** A *cohort* is a set of fingerprints of models that are neither
  enrolled nor used to train the extractor. Adaptive S-norm (Matějka et al. 2017; SpeechBrain's
  verification recipe) centres and scales a score by the mean / std of the ``top_n`` highest
  cohort scores of the model side (Z-norm half) and of the probe side (T-norm half), and averages
  the two: ``s_norm = ((s - mu_m) / sd_m + (s - mu_p) / sd_p) / 2``. For a fixed model and probe
  it is an increasing affine function of the raw score.
- **Calibrated likelihood ratios.** The normalised score is mapped to ``log10 LR`` for
  Hp "same model" vs Hd "another model", with a calibration fitted on *cohort* genuine / impostor
  trials (never on the probes being judged): prior-weighted logistic regression (BOSARIS'
  ``train_llr_fusion``, effective prior 0.5) or PAV (isotonic). Quality is measured by Cllr
  (0 = perfect, 1 = an uninformative system that always says LR = 1) and Cllr_min (Cllr after
  the best monotone recalibration: the discrimination loss alone).
- **The ENFSI verbal scale** (ENFSI guideline for evaluative reporting, 2015) turns an LR into
  the words an analyst reports.

Everything here is pure numpy / scipy; the HDF5 cohort store lives in :mod:`fpt.cohort`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

LN10 = math.log(10.0)
#: adaptive S-norm: how many of the highest cohort scores give the mean / std
DEFAULT_TOP_N = 50
#: an image is attributed when its best model's log10 LR reaches this level. 0 (LR >= 1: the
#: evidence favours the model over "another model") is the Bayes decision for equal priors and
#: equal costs; an analyst who wants at least "moderate support" passes 1 (LR >= 10).
DEFAULT_MIN_LOG10_LR = 0.0
#: (probe images, model images) of the cohort trials a calibration is fitted for
CALIBRATION_SIZES: tuple[tuple[int, int], ...] = ((1, 5), (1, 10), (1, 1), (5, 5), (10, 10))
_SD_FLOOR = 1e-4

# ---------------------------------------------------------------- score normalisation


@dataclass(frozen=True)
class CohortStats:
    """Mean and standard deviation of one side's (top-N) cohort scores; arrays broadcast with scores."""

    mean: np.ndarray
    std: np.ndarray


def cohort_stats(scores: np.ndarray, top_n: int | None = DEFAULT_TOP_N, exclude: np.ndarray | None = None
                 ) -> CohortStats:
    """Stats of each row of ``scores`` (n, C) against the cohort: all C scores, or the ``top_n`` highest.

    ``exclude`` (n, C) bool masks cohort members that must not count for that row (the model
    itself, when a cohort model is being scored).
    """
    s = np.asarray(scores, np.float64)
    if s.ndim != 2 or s.shape[1] < 2:
        raise ValueError("cohort statistics need a (n, C) score matrix with C >= 2")
    if exclude is not None:
        s = np.where(exclude, -np.inf, s)
    avail = s.shape[1] - (0 if exclude is None else int(np.max(exclude.sum(axis=1), initial=0)))
    n = avail if top_n is None else max(2, min(int(top_n), avail))
    top = -np.sort(-s, axis=1)[:, :n]  # the n highest per row (excluded ones are -inf, sorted last)
    return CohortStats(top.mean(axis=1), np.maximum(top.std(axis=1, ddof=1), _SD_FLOOR))


def znorm(raw: np.ndarray, model: CohortStats) -> np.ndarray:
    """Z-norm: ``raw`` (P, M) centred and scaled by each model's cohort stats (M,)."""
    return (np.asarray(raw, np.float64) - model.mean) / model.std


def tnorm(raw: np.ndarray, probe: CohortStats) -> np.ndarray:
    """T-norm: ``raw`` (P, M) centred and scaled by each probe's cohort stats (P,)."""
    return (np.asarray(raw, np.float64) - probe.mean[:, None]) / probe.std[:, None]


def snorm(raw: np.ndarray, probe: CohortStats, model: CohortStats) -> np.ndarray:
    """S-norm: the mean of the Z- and T-normalised scores (adaptive when the stats are top-N)."""
    return 0.5 * (znorm(raw, model) + tnorm(raw, probe))


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.atleast_2d(np.asarray(x, np.float64))
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def normalised_scores(probes: np.ndarray, models: np.ndarray, cohort: np.ndarray, top_n: int | None = DEFAULT_TOP_N,
                      include_models: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Raw cosines and adaptive-S-norm scores of ``probes`` (P, D) against ``models`` (M, D).

    The cohort of score (p, m) is ``cohort`` (C, D) plus, with ``include_models``, the other
    models of the gallery: a probe that resembles every enrolled model equally is not evidence
    for any one of them. Returns ``(raw (P, M), normalised (P, M))``.
    """
    p, m, c = _unit(probes), _unit(models), _unit(cohort)
    raw = p @ m.T
    pc, mc = p @ c.T, m @ c.T
    n_models = m.shape[0]
    if not include_models or n_models < 2:
        return raw, snorm(raw, cohort_stats(pc, top_n), cohort_stats(mc, top_n))
    mm = m @ m.T
    out = np.empty_like(raw)
    for j in range(n_models):
        others = np.delete(np.arange(n_models), j)
        ps = cohort_stats(np.hstack([pc, raw[:, others]]), top_n)
        ms = cohort_stats(np.hstack([mc[j:j + 1], mm[j:j + 1, others]]), top_n)
        out[:, j] = snorm(raw[:, j:j + 1], ps, ms)[:, 0]
    return raw, out


# ---------------------------------------------------------------- calibration to log10 LR


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


@dataclass
class LogisticCalibration:
    """``log10 LR = (a * score + b) / ln 10``; ``a > 0`` keeps it increasing in the score.

    ``max_abs`` bounds ``|log10 LR|``: a calibration fitted on n trials of each kind cannot
    support an LR beyond about n (a simplified form of the empirical lower / upper bounds of
    Vergeer et al. 2016), so a straight line is not extrapolated into "extremely strong support".
    """

    a: float
    b: float
    method: str = "logistic"
    max_abs: float | None = None

    def log10_lr(self, scores: np.ndarray) -> np.ndarray:
        v = (self.a * np.asarray(scores, np.float64) + self.b) / LN10
        return v if self.max_abs is None else np.clip(v, -self.max_abs, self.max_abs)


@dataclass
class PavCalibration:
    """Isotonic (PAV) map from score to log10 LR, linearly interpolated between fitted points."""

    x: list[float]
    y: list[float]  # log10 LR at x, non-decreasing
    method: str = "pav"

    def log10_lr(self, scores: np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(scores, np.float64), self.x, self.y)


Calibrator = LogisticCalibration | PavCalibration


def _check_trials(tar: np.ndarray, non: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tar, non = np.asarray(tar, np.float64).ravel(), np.asarray(non, np.float64).ravel()
    if tar.size == 0 or non.size == 0:
        raise ValueError("calibration needs at least one target and one non-target score")
    if not (np.all(np.isfinite(tar)) and np.all(np.isfinite(non))):
        raise ValueError("calibration scores must be finite")
    return tar, non


def fit_logistic(tar: np.ndarray, non: np.ndarray, prior: float = 0.5) -> LogisticCalibration:
    """Prior-weighted logistic regression of target vs non-target scores (BOSARIS style).

    Each class is weighted so the effective prior is ``prior``; the fitted log-odds minus
    ``logit(prior)`` is the natural-log LR. Minimises the (convex) weighted cross-entropy.
    """
    from scipy.optimize import minimize
    from scipy.special import expit

    tar, non = _check_trials(tar, non)
    lp = math.log(prior / (1 - prior))
    scale = float(np.std(np.r_[tar, non])) or 1.0  # fit on standardised scores: well-conditioned

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        a, b = w
        zt = a * tar / scale + b + lp
        zn = a * non / scale + b + lp
        # softplus(-zt) for targets, softplus(zn) for non-targets; gradients by hand
        lt, ln = np.logaddexp(0, -zt), np.logaddexp(0, zn)
        st, sn = -expit(-zt), expit(zn)  # d softplus(-z) / dz and d softplus(z) / dz, overflow-free
        f = prior * lt.mean() + (1 - prior) * ln.mean()
        g = np.array([prior * np.mean(st * tar / scale) + (1 - prior) * np.mean(sn * non / scale),
                      prior * np.mean(st) + (1 - prior) * np.mean(sn)])
        return float(f), g

    res = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
    a, b = float(res.x[0]) / scale, float(res.x[1])
    if a <= 0:  # scores carry no (or inverted) information: the honest answer is LR = 1
        a, b = 1e-9, 0.0
    return LogisticCalibration(a, b, max_abs=float(math.log10(max(2, min(tar.size, non.size)))))


def pav(y: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Pool-adjacent-violators: the non-decreasing fit of ``y`` (weights ``w``) in least squares."""
    y = np.asarray(y, np.float64)
    w = np.ones_like(y) if w is None else np.asarray(w, np.float64)
    vals, wts, lens = [], [], []
    for yi, wi in zip(y, w):
        vals.append(yi)
        wts.append(wi)
        lens.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            v2, w2, l2 = vals.pop(), wts.pop(), lens.pop()
            v1, w1, l1 = vals.pop(), wts.pop(), lens.pop()
            wt = w1 + w2
            vals.append((v1 * w1 + v2 * w2) / wt)
            wts.append(wt)
            lens.append(l1 + l2)
    return np.repeat(vals, lens)


def pav_log10_lr(tar: np.ndarray, non: np.ndarray, max_abs: float | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Optimal monotone log10 LRs of the trials themselves (the PAV step of Cllr_min).

    Returns ``(sorted scores, their log10 LR, is_target)``. The class prior of the trials is
    divided out so the result is an LR. ``max_abs`` clips infinite values (for a usable map).
    """
    tar, non = _check_trials(tar, non)
    s = np.r_[tar, non]
    y = np.r_[np.ones(tar.size), np.zeros(non.size)]
    # ties: targets first, so a tied block pools into one value (the conservative direction)
    order = np.lexsort((-y, s))
    s, y = s[order], y[order]
    post = pav(y)
    with np.errstate(divide="ignore"):
        llr = (_logit(np.clip(post, 0.0, 1.0)) - math.log(tar.size / non.size)) / LN10
    if max_abs is not None:
        llr = np.clip(llr, -max_abs, max_abs)
    return s, llr, y.astype(bool)


def fit_pav(tar: np.ndarray, non: np.ndarray, max_abs: float = 6.0) -> PavCalibration:
    """Isotonic calibration; LRs clipped to ``10 ** +-max_abs`` (a finite sample proves no more)."""
    s, llr, _ = pav_log10_lr(tar, non, max_abs=max_abs)
    # keep one point per distinct score (the mean of the pooled values there)
    xs, idx = np.unique(s, return_index=True)
    ys = np.maximum.accumulate(llr[np.r_[idx[1:] - 1, s.size - 1]])
    return PavCalibration(xs.tolist(), ys.tolist())


def cllr(tar_log10_lr: np.ndarray, non_log10_lr: np.ndarray) -> float:
    """Log-likelihood-ratio cost (Brümmer & du Preez 2006), in bits.

    ``0.5 * (mean log2(1 + 1/LR) over targets + mean log2(1 + LR) over non-targets)``; 1 is
    what a system that always answers LR = 1 scores, 0 is perfect.
    """
    t = np.asarray(tar_log10_lr, np.float64) * LN10
    n = np.asarray(non_log10_lr, np.float64) * LN10
    if t.size == 0 or n.size == 0:
        raise ValueError("Cllr needs target and non-target trials")
    return float(0.5 * (np.mean(np.logaddexp(0, -t)) + np.mean(np.logaddexp(0, n))) / math.log(2))


def cllr_min(tar_scores: np.ndarray, non_scores: np.ndarray) -> float:
    """Cllr after the optimal monotone (PAV) recalibration of these very trials: discrimination only."""
    _, llr, is_t = pav_log10_lr(tar_scores, non_scores)
    with np.errstate(invalid="ignore"):
        return cllr(llr[is_t], llr[~is_t])


# ---------------------------------------------------------------- ENFSI verbal scale

#: (lower bound of log10 LR, words) for LR >= 1, after the ENFSI guideline's table
_ENFSI = [
    (6.0, "extremely strong support"),
    (4.0, "very strong support"),
    (3.0, "strong support"),
    (2.0, "moderately strong support"),
    (1.0, "moderate support"),
    (math.log10(2.0), "weak support"),
]
NEUTRAL = "no support for either proposition"


def verbal_scale(log10_lr: float, hp: str = "the same model", hd: str = "a different model") -> str:
    """ENFSI wording for an LR: e.g. ``moderate support for the same model rather than a different model``.

    LRs below 1 support the alternative with the mirrored wording; ``1/2 < LR < 2`` is neutral.
    """
    v = float(log10_lr)
    if not math.isfinite(v):
        v = math.copysign(99.0, v) if not math.isnan(v) else 0.0
    a = abs(v)
    for lo, words in _ENFSI:
        if a >= lo:
            return f"{words} for {hp} rather than {hd}" if v > 0 else f"{words} for {hd} rather than {hp}"
    return NEUTRAL


def verbal_level(log10_lr: float) -> str:
    """Just the strength words (``moderate support``); LR < 1 reads ``weak support against``."""
    v = float(log10_lr) if math.isfinite(float(log10_lr)) else math.copysign(99.0, float(log10_lr))
    for lo, words in _ENFSI:
        if abs(v) >= lo:
            return words if v > 0 else f"{words} against"
    return "neutral"


# ---------------------------------------------------------------- cohort trials and the fitted calibration


@dataclass
class CalibrationSet:
    """LR calibrations fitted on cohort trials, one per (probe images, model images) size."""

    top_n: int
    calibrators: dict[tuple[int, int], Calibrator]
    cllr: dict[tuple[int, int], float] = field(default_factory=dict)  # on the cohort trials (in-sample)
    cllr_min: dict[tuple[int, int], float] = field(default_factory=dict)
    trials: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)  # (targets, non-targets)

    def for_sizes(self, n_probe: int, n_model: int) -> Calibrator:
        """The calibrator fitted for the nearest set sizes (log scale; probe side weighs most)."""
        def dist(k: tuple[int, int]) -> float:
            return 2 * abs(math.log(k[0]) - math.log(max(1, n_probe))) + abs(math.log(k[1]) - math.log(max(1, n_model)))

        return self.calibrators[min(self.calibrators, key=dist)]

    def to_dict(self) -> dict:
        return {"top_n": self.top_n, "sizes": [
            {"n_probe": k[0], "n_model": k[1], "calibrator": vars(c), "cllr": self.cllr.get(k),
             "cllr_min": self.cllr_min.get(k), "targets": self.trials.get(k, (0, 0))[0],
             "non_targets": self.trials.get(k, (0, 0))[1]} for k, c in self.calibrators.items()]}

    @classmethod
    def from_dict(cls, d: dict) -> "CalibrationSet":
        cals: dict[tuple[int, int], Calibrator] = {}
        out = cls(int(d["top_n"]), cals)
        for row in d["sizes"]:
            k = (int(row["n_probe"]), int(row["n_model"]))
            c = dict(row["calibrator"])
            cals[k] = PavCalibration(**c) if c.get("method") == "pav" else LogisticCalibration(**c)
            if row.get("cllr") is not None:
                out.cllr[k] = float(row["cllr"])
            if row.get("cllr_min") is not None:
                out.cllr_min[k] = float(row["cllr_min"])
            out.trials[k] = (int(row.get("targets", 0)), int(row.get("non_targets", 0)))
        return out


def cohort_trials(emb: np.ndarray, labels: np.ndarray, n_probe: int, n_model: int, *, per_model: int,
                  top_n: int | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Normalised target / non-target scores of cohort models tested against the rest of the cohort.

    For each cohort model with ``n_probe + n_model`` images: ``per_model`` target trials (a probe
    set and a disjoint model set of that model) and as many non-target trials (its probe set
    against another cohort model's set). The cohort of a trial is every *other* cohort model
    (those in the trial excluded), exactly as an unseen generator meets the cohort in use.
    """
    e = _unit(emb)
    labels = np.asarray(labels)
    classes = np.unique(labels)
    members = {c: np.nonzero(labels == c)[0] for c in classes}
    fps = _unit(np.stack([e[members[c]].mean(axis=0) for c in classes]))
    need = n_probe + n_model
    ok = [i for i, c in enumerate(classes) if members[c].size >= need]
    if len(ok) < 3:
        raise ValueError(f"cohort calibration needs 3+ models with {need} images each")
    P, Mv, own_p, own_m = [], [], [], []
    for i in ok:
        for _ in range(per_model):
            pick = rng.choice(members[classes[i]], size=need, replace=False)
            P.append(e[pick[:n_probe]].mean(axis=0))
            Mv.append(e[pick[n_probe:]].mean(axis=0))
            own_p.append(i)
            own_m.append(i)
    for i in ok:
        for _ in range(per_model):
            j = ok[int(rng.integers(len(ok) - 1))]
            j = j if j != i else ok[-1]
            P.append(e[rng.choice(members[classes[i]], size=n_probe, replace=False)].mean(axis=0))
            Mv.append(e[rng.choice(members[classes[j]], size=n_model, replace=False)].mean(axis=0))
            own_p.append(i)
            own_m.append(j)
    P, Mv = _unit(np.asarray(P)), _unit(np.asarray(Mv))
    own_p, own_m = np.asarray(own_p), np.asarray(own_m)
    raw = np.sum(P * Mv, axis=1)
    cidx = np.arange(fps.shape[0])
    excl = (cidx[None, :] == own_p[:, None]) | (cidx[None, :] == own_m[:, None])
    ps = cohort_stats(P @ fps.T, top_n, excl)
    ms = cohort_stats(Mv @ fps.T, top_n, excl)
    s = 0.5 * ((raw - ms.mean) / ms.std + (raw - ps.mean) / ps.std)
    n_t = len(ok) * per_model
    return s[:n_t], s[n_t:]


def fit_cohort_calibration(emb: np.ndarray, labels: np.ndarray, *, top_n: int = DEFAULT_TOP_N,
                           sizes: tuple[tuple[int, int], ...] = CALIBRATION_SIZES, per_model: int = 20,
                           method: str = "logistic", seed: int = 0) -> CalibrationSet:
    """Fit one score -> log10 LR calibration per set size on cohort trials (see :func:`cohort_trials`).

    Sizes the cohort cannot supply (too few images per model) are skipped; at least one must fit.
    """
    if method not in ("logistic", "pav"):
        raise ValueError(f"unknown calibration method '{method}' (logistic or pav)")
    rng = np.random.default_rng(seed)
    out = CalibrationSet(int(top_n), {})
    for k in sizes:
        try:
            tar, non = cohort_trials(emb, labels, k[0], k[1], per_model=per_model, top_n=top_n, rng=rng)
        except ValueError:
            continue
        cal: Calibrator = fit_logistic(tar, non) if method == "logistic" else fit_pav(tar, non)
        out.calibrators[k] = cal
        out.cllr[k] = cllr(cal.log10_lr(tar), cal.log10_lr(non))
        out.cllr_min[k] = cllr_min(tar, non)
        out.trials[k] = (int(tar.size), int(non.size))
    if not out.calibrators:
        raise ValueError("the cohort has too few images per model for any calibration size "
                         f"(smallest needs {min(a + b for a, b in sizes)} per model)")
    return out


# ---------------------------------------------------------------- scoring with a cohort


@dataclass
class Scored:
    """Scores of P probes against M models: raw cosine, normalised, log10 LR (all (P, M))."""

    raw: np.ndarray
    norm: np.ndarray
    log10_lr: np.ndarray


def score_with_cohort(probes: np.ndarray, models: np.ndarray, cohort_fps: np.ndarray, calibration: CalibrationSet,
                      n_probe: int = 1, n_model: int = 10, include_models: bool = True) -> Scored:
    """Raw, adaptive-S-normalised and calibrated scores; the calibrator is the one for these set sizes."""
    raw, norm = normalised_scores(probes, models, cohort_fps, calibration.top_n, include_models)
    cal = calibration.for_sizes(n_probe, n_model)
    return Scored(raw, norm, cal.log10_lr(norm))


def verification_scores(a: np.ndarray, b: np.ndarray, cohort_fps: np.ndarray, top_n: int = DEFAULT_TOP_N
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Raw and S-normalised scores of set fingerprints ``a[i]`` vs ``b[i]`` (rows paired, not crossed)."""
    fa, fb, c = _unit(a), _unit(b), _unit(cohort_fps)
    raw = np.sum(fa * fb, axis=1)
    sa, sb = cohort_stats(fa @ c.T, top_n), cohort_stats(fb @ c.T, top_n)
    return raw, 0.5 * ((raw - sa.mean) / sa.std + (raw - sb.mean) / sb.std)


def rate_at_far(accept_scores_known: np.ndarray, correct: np.ndarray, unknown_scores: np.ndarray, far: float
                ) -> float:
    """Open-set FRR at a false-accept rate: share of known probes not (accepted and right).

    The threshold lets through at most ``far`` of the unknown probes' best scores; a known probe
    counts as accepted only if its best score passes and its best model is the right one.
    """
    from fpt.metrics.verification import threshold_at_far

    if unknown_scores.size == 0 or accept_scores_known.size == 0:
        return float("nan")
    t = threshold_at_far(unknown_scores, far=far)
    return float(1.0 - np.mean((accept_scores_known >= t) & correct))


__all__ = ["DEFAULT_TOP_N", "DEFAULT_MIN_LOG10_LR", "CohortStats", "cohort_stats", "znorm", "tnorm", "snorm",
           "normalised_scores", "LogisticCalibration", "PavCalibration", "fit_logistic", "fit_pav", "pav",
           "pav_log10_lr", "cllr", "cllr_min", "verbal_scale", "verbal_level", "CalibrationSet", "cohort_trials",
           "fit_cohort_calibration", "Scored", "score_with_cohort", "verification_scores", "rate_at_far"]
