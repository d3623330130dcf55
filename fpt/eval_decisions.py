"""``fpt eval``'s decision-layer protocols: calibration (Cllr) and the open-set sweep.

Run on the same splits as the rest of :mod:`fpt.evaluation`, for one method's embeddings:

- **Verification calibration**: Cllr and Cllr_min (N_S = 1 and 10) on the *test* pairs of each
  N_S, for two LR sources: ``gallery`` (logistic on the raw cosine, fitted on the *calibration*
  pairs: the analogue of fitting on a user's gallery) and ``cohort`` (adaptive S-norm against the
  extractor's cohort, calibrated on cohort models only). Cllr_min is the discrimination part.
- **Open-set sweep** over gallery size (3, 5, all known models) x shots (5, 10), ``repeats``
  random draws each: FRR at FAR 1 % and 5 % on the best score (raw cosine and S-normalised; an
  LR is a monotone map of its score, so its FRR-at-FAR is its score's), and open-set accuracy
  at three operating points: the raw threshold ``fpt gallery calibrate`` stores (FAR ``far`` on
  the gallery's leave-one-out scores), and log10 LR >= ``min_log10_lr`` with each LR source.
  FRR counts a known probe as rejected unless it is accepted *and* attributed to its model.

Thresholds and calibrations are fitted on gallery / calibration-split / cohort data only, never
on the probes or test pairs they are measured on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fpt import calibration as C
from fpt.metrics import identification as I
from fpt.metrics import verification as M

GALLERY_SIZES: tuple[int | None, ...] = (3, 5, None)  # None = every known model
SHOTS = (5, 10)
CLLR_NS = (1, 10)
FARS = (0.01, 0.05)
SCORES = ("raw", "snorm")
OPERATING_POINTS = ("raw threshold", "LR gallery", "LR cohort")


@dataclass
class OpenSetCell:
    gallery_size: str  # "3", "5" or "all (n)"
    shots: int
    draws: int
    main_protocol: bool = False  # the same draws as fpt eval's open-set protocol
    frr_at_far: dict[str, dict[str, float | None]] = field(default_factory=dict)  # score -> "0.01" -> FRR
    accuracy: dict[str, float | None] = field(default_factory=dict)  # operating point -> open-set accuracy
    known_accuracy: dict[str, float | None] = field(default_factory=dict)
    unknown_rejection: dict[str, float | None] = field(default_factory=dict)


@dataclass
class DecisionResult:
    cllr: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)  # source -> N_S -> {cllr, cllr_min}
    open_set: list[OpenSetCell] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def open_set_draws(labels: np.ndarray, gallery_size: int | None, shots: int, repeats: int, unknown_fraction: float,
                   rng: np.random.Generator) -> list[tuple[list[str], np.ndarray, np.ndarray]]:
    """``(unknown models, gallery idx, probe idx)`` draws: ``gallery_size`` known models (None: all
    but ``unknown_fraction`` of them, at least one unknown), ``shots`` images each enrolled."""
    counts = {c: int(np.sum(labels == c)) for c in np.unique(labels)}
    classes = sorted(counts)
    n_unk_all = min(max(1, int(round(unknown_fraction * len(classes)))), len(classes) - 2)
    n_known = len(classes) - n_unk_all if gallery_size is None else gallery_size
    eligible = [c for c in classes if counts[c] > shots]  # known models must leave probes
    if n_known < 2 or len(eligible) < n_known or len(classes) - n_known < 1:
        return []
    out = []
    for _ in range(repeats):
        known = list(rng.choice(eligible, size=n_known, replace=False))
        unk = [c for c in classes if c not in known]
        gal, probe = [], []
        for c in known:
            idx = rng.permutation(np.nonzero(labels == c)[0])
            gal.extend(idx[:shots])
            probe.extend(idx[shots:])
        probe.extend(np.nonzero(np.isin(labels, unk))[0])
        out.append((unk, np.sort(np.asarray(gal)), np.sort(np.asarray(probe))))
    return out


def _gallery_of(emb: np.ndarray, labels: np.ndarray, gal: np.ndarray):
    from pathlib import Path

    from fpt.gallery import Gallery, ModelEntry

    g = Gallery(path=Path("<eval>"))
    for c in np.unique(labels[gal]):
        g.models[str(c)] = ModelEntry(str(c), np.asarray(emb[gal[labels[gal] == c]], np.float32))
    return g


def _open_set_cell(emb: np.ndarray, labels: np.ndarray, draws, cohort, far: float, min_log10_lr: float,
                   name: str, shots: int, shrinkage: float | None = None) -> OpenSetCell:
    from fpt.attribution import gallery_lr_calibration
    from fpt.gallery import calibration_scores

    cell = OpenSetCell(name, shots, len(draws))
    frr: dict[str, dict[str, list[float]]] = {s: {str(f): [] for f in FARS} for s in SCORES}
    acc: dict[str, list[float]] = {p: [] for p in OPERATING_POINTS}
    kacc: dict[str, list[float]] = {p: [] for p in OPERATING_POINTS}
    urej: dict[str, list[float]] = {p: [] for p in OPERATING_POINTS}
    cfp = cohort.fingerprints() if cohort is not None else None
    for unk, gal, probe in draws:
        classes, raw, rank = I.gallery_scores(emb, labels, gal, probe, shrinkage)
        cls = np.asarray(classes, dtype=object)
        truth = labels[probe]
        is_unk = np.isin(truth, unk)
        scores = {"raw": (raw, rank)}  # (decided on, ranked by)
        if cfp is not None:
            _, fp = I.fingerprints(emb, labels, gal)
            snorm = C.normalised_scores(emb[probe], fp, cfp, cohort.calibration.top_n)[1]
            scores["snorm"] = (snorm, snorm)
        best, right = {}, {}
        for s, (mat, order) in scores.items():
            top = order.argmax(axis=1)
            best[s] = mat[np.arange(len(top)), top]
            right[s] = cls[top] == truth
            for f in FARS:
                frr[s][str(f)].append(C.rate_at_far(best[s][~is_unk], right[s][~is_unk], best[s][is_unk], f))
        g = _gallery_of(emb, labels, gal)
        decided: dict[str, np.ndarray] = {}
        _, imp, _ = calibration_scores(g)
        decided["raw threshold"] = best["raw"] >= M.threshold_at_far(imp, far=far)
        gcal = gallery_lr_calibration(g)
        if gcal is not None:
            decided["LR gallery"] = gcal.log10_lr(best["raw"]) >= min_log10_lr
        if "snorm" in scores:
            n_model = int(np.median([m.count for m in g.models.values()]))
            decided["LR cohort"] = cohort.calibration.for_sizes(1, n_model).log10_lr(best["snorm"]) >= min_log10_lr
        for p, accept in decided.items():
            sk = "snorm" if p == "LR cohort" else "raw"
            ok_known = (~is_unk) & accept & right[sk]
            ok_unk = is_unk & ~accept
            acc[p].append(float(np.mean(ok_known | ok_unk)))
            kacc[p].append(float(np.mean(ok_known[~is_unk])))
            urej[p].append(float(np.mean(ok_unk[is_unk])))

    def mean(v: list[float]) -> float | None:
        v = [x for x in v if x == x]
        return float(np.mean(v)) if v else None

    cell.frr_at_far = {s: {f: mean(v) for f, v in d.items()} for s, d in frr.items() if s in scores}
    cell.accuracy = {p: mean(v) for p, v in acc.items()}
    cell.known_accuracy = {p: mean(v) for p, v in kacc.items()}
    cell.unknown_rejection = {p: mean(v) for p, v in urej.items()}
    return cell


def run_decisions(emb: np.ndarray, labels: np.ndarray, pairs: dict, cohort, *, seed: int, repeats: int,
                  unknown_fraction: float, far: float, min_log10_lr: float = C.DEFAULT_MIN_LOG10_LR,
                  base_draws: tuple[int, list] | None = None,
                  gallery_sizes: Sequence[int | None] = GALLERY_SIZES, shots: Sequence[int] = SHOTS,
                  shrinkage: float | None = None) -> DecisionResult:
    """Cllr (verification) and the open-set sweep for one method on one group.

    ``pairs`` is :class:`fpt.evaluation.GroupSplits.pairs`; ``base_draws`` = (k_shot, open-set
    draws) of the main protocol, reused for the (all, k_shot) cell so both tables agree.
    ``shrinkage``: the open-set cells rank models after the gallery's within-model whitening
    (decisions still read the ranked-first model's raw cosine), as ``fpt identify`` does.
    """
    emb = M.l2_normalise(np.asarray(emb, np.float32))
    labels = np.asarray(labels).astype(str)
    out = DecisionResult()
    has_cohort = cohort is not None and cohort.calibration is not None
    if not has_cohort:
        out.notes.append("no calibrated cohort for this method: S-norm and cohort LR not measured")
    cfp = cohort.fingerprints() if has_cohort else None
    for n_s in CLLR_NS:
        pr = pairs.get(n_s)
        if pr is None:
            continue
        ca, cb, cs, ta, tb, ts = pr
        if not (ts.any() and (~ts).any() and cs.any() and (~cs).any()):
            continue
        cal_raw, test_raw = M.pair_scores(emb, ca, cb), M.pair_scores(emb, ta, tb)
        lcal = C.fit_logistic(cal_raw[cs], cal_raw[~cs])
        lt = lcal.log10_lr(test_raw)
        out.cllr.setdefault("gallery", {})[n_s] = {"cllr": C.cllr(lt[ts], lt[~ts]),
                                                   "cllr_min": C.cllr_min(test_raw[ts], test_raw[~ts])}
        if has_cohort:
            fa = M.l2_normalise(emb[ta].mean(axis=1)) if ta.ndim == 2 else emb[ta]
            fb = M.l2_normalise(emb[tb].mean(axis=1)) if tb.ndim == 2 else emb[tb]
            _, norm = C.verification_scores(fa, fb, cfp, cohort.calibration.top_n)
            lc = cohort.calibration.for_sizes(n_s, n_s).log10_lr(norm)
            out.cllr.setdefault("cohort", {})[n_s] = {"cllr": C.cllr(lc[ts], lc[~ts]),
                                                      "cllr_min": C.cllr_min(norm[ts], norm[~ts])}
    rng = np.random.default_rng(seed + 7)
    n_classes = len(np.unique(labels))
    if base_draws is not None:
        shots = sorted(set(shots) | {base_draws[0]})
    for k in shots:
        for gs in gallery_sizes:
            main = base_draws is not None and gs is None and k == base_draws[0]
            if main:
                draws = base_draws[1]
            else:
                draws = open_set_draws(labels, gs, k, repeats, unknown_fraction, rng)
            if not draws:
                out.notes.append(f"open-set {gs or 'all'} models x {k} shots skipped: too few models / images")
                continue
            name = str(gs) if gs is not None else f"all ({n_classes - len(draws[0][0])})"
            cell = _open_set_cell(emb, labels, draws, cohort if has_cohort else None, far, min_log10_lr, name, k,
                                  shrinkage)
            cell.main_protocol = main
            out.open_set.append(cell)
    return out


def decision_rows(d: DecisionResult) -> tuple[list[str], list[list]]:
    """The open-set sweep as table rows (one per gallery size x shots)."""
    cols = ["gallery models", "shots", "FRR@FAR1% raw", "FRR@FAR1% S-norm", "FRR@FAR5% raw", "FRR@FAR5% S-norm",
            "open-set acc raw thr.", "open-set acc LR gallery", "open-set acc LR cohort"]
    rows = []
    for c in d.open_set:
        f = c.frr_at_far
        rows.append([c.gallery_size, c.shots, f.get("raw", {}).get("0.01"), f.get("snorm", {}).get("0.01"),
                     f.get("raw", {}).get("0.05"), f.get("snorm", {}).get("0.05"),
                     c.accuracy.get("raw threshold"), c.accuracy.get("LR gallery"), c.accuracy.get("LR cohort")])
    return cols, rows


def cllr_rows(d: DecisionResult) -> tuple[list[str], list[list]]:
    cols = ["LR source", "N_S", "Cllr", "Cllr_min"]
    rows = [[src, n, v["cllr"], v["cllr_min"]] for src, per in d.cllr.items() for n, v in sorted(per.items())]
    return cols, rows


__all__ = ["OpenSetCell", "DecisionResult", "open_set_draws", "run_decisions", "decision_rows", "cllr_rows",
           "GALLERY_SIZES", "SHOTS", "CLLR_NS", "FARS"]
