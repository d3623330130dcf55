"""Verification metrics on similarity scores, and the cosine scoring they share (NumPy only).

Conventions: a *score* is a similarity (higher = more likely "same model" / "known"); a *label* is
1 for a genuine pair (same model) or a known-model probe and 0 otherwise. A decision is
``score >= threshold`` -> accept.

Protocols follow paper 001 §IV-A and paper 000 §5, with one deliberate fix (docs/science.md, "Known faults"): the
verification accuracy threshold is chosen on a *calibration* split and applied to the test pairs,
never tuned on the test pairs themselves.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "roc_curve", "roc_auc", "eer", "accuracy_at_threshold", "best_accuracy", "threshold_at_far",
    "far_frr", "cosine_matrix", "l2_normalise", "verification_pairs", "set_pairs", "pair_scores",
]


def _as_scores_labels(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.size}) and labels ({y.size}) differ in length")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or inf")
    return s, y


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points ``(fpr, tpr, thresholds)`` for "accept if score >= threshold".

    Thresholds are the distinct scores in decreasing order, preceded by +inf (accept nothing), so
    the curve starts at (0, 0) and ends at (1, 1). Tied scores form a single point.
    """
    s, y = _as_scores_labels(scores, labels)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC needs at least one positive and one negative")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    # last index of each run of tied scores
    distinct = np.r_[np.nonzero(np.diff(s_sorted))[0], s_sorted.size - 1]
    tps = np.cumsum(y_sorted)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0.0, tps / n_pos]
    fpr = np.r_[0.0, fps / n_neg]
    thr = np.r_[np.inf, s_sorted[distinct]]
    return fpr, tpr, thr


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve = P(score of a random positive > random negative), ties count 1/2.

    Computed exactly from ranks (Mann-Whitney U), so it needs no curve interpolation.
    """
    s, y = _as_scores_labels(scores, labels)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs at least one positive and one negative")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, dtype=np.float64)
    s_sorted = s[order]
    # average ranks over ties (1-based)
    starts = np.r_[0, np.nonzero(np.diff(s_sorted))[0] + 1]
    ends = np.r_[starts[1:], s.size]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def far_frr(scores, labels, threshold: float) -> tuple[float, float]:
    """False-accept rate (impostors with score >= t) and false-reject rate (genuines below t)."""
    s, y = _as_scores_labels(scores, labels)
    far = float(np.mean(s[~y] >= threshold)) if (~y).any() else float("nan")
    frr = float(np.mean(s[y] < threshold)) if y.any() else float("nan")
    return far, frr


def eer(scores, labels) -> tuple[float, float]:
    """Equal error rate and the threshold where it occurs: ``(eer, threshold)``.

    Walks the ROC; at the crossing of FAR and FRR = 1 - TPR it interpolates linearly between the
    two neighbouring operating points (the usual convention), and returns the threshold of the
    nearer point.
    """
    fpr, tpr, thr = roc_curve(scores, labels)
    fnr = 1.0 - tpr
    diff = fpr - fnr  # increasing from -1 to +1
    i = int(np.searchsorted(diff, 0.0, side="left"))
    if i == 0:
        return float(fpr[0]), float(thr[1] if thr.size > 1 else thr[0])
    d0, d1 = diff[i - 1], diff[i]
    w = 0.0 if d1 == d0 else -d0 / (d1 - d0)
    rate = float(fpr[i - 1] + w * (fpr[i] - fpr[i - 1]))
    rate_b = float(fnr[i - 1] + w * (fnr[i] - fnr[i - 1]))
    j = i if w >= 0.5 else i - 1
    t = thr[j] if np.isfinite(thr[j]) else thr[min(j + 1, thr.size - 1)]
    return (rate + rate_b) / 2.0, float(t)


def accuracy_at_threshold(scores, labels, threshold: float) -> float:
    """Fraction of correct decisions when accepting ``score >= threshold``."""
    s, y = _as_scores_labels(scores, labels)
    return float(np.mean((s >= threshold) == y))


def best_accuracy(scores, labels) -> tuple[float, float]:
    """Best accuracy over all thresholds and that threshold (the papers' optimistic number).

    Reported only beside :func:`accuracy_at_threshold` with a calibrated threshold, for
    comparison with published tables; it is tuned on the data it scores.
    """
    fpr, tpr, thr = roc_curve(scores, labels)
    s, y = _as_scores_labels(scores, labels)
    n_pos, n_neg = y.sum(), (~y).sum()
    acc = (tpr * n_pos + (1.0 - fpr) * n_neg) / (n_pos + n_neg)
    k = int(np.argmax(acc))
    t = thr[k] if np.isfinite(thr[k]) else np.nextafter(s.max(), np.inf)
    return float(acc[k]), float(t)


def threshold_at_far(scores, labels=None, far: float = 0.05) -> float:
    """Smallest threshold whose false-accept rate on the impostor scores is <= ``far``.

    ``scores`` may be impostor scores alone (``labels=None``) or all scores with labels (only
    the negatives are used). Accepting ``score >= t`` then lets through at most ``far`` of the
    impostors seen here. With ``far=0`` the threshold sits just above the highest impostor.
    """
    if not 0.0 <= far <= 1.0:
        raise ValueError("far must be in [0, 1]")
    if labels is None:
        imp = np.asarray(scores, dtype=np.float64).ravel()
    else:
        s, y = _as_scores_labels(scores, labels)
        imp = s[~y]
    if imp.size == 0:
        raise ValueError("threshold_at_far needs at least one impostor score")
    imp = np.sort(imp)[::-1]  # descending
    allowed = int(np.floor(far * imp.size + 1e-9))  # impostors that may be accepted
    if allowed >= imp.size:
        return float(imp[-1])
    # accept at most `allowed`: threshold just above the (allowed+1)-th highest impostor. The step
    # is one float32 ulp (exactly representable in float64 too), so the decision holds whether
    # scores are later compared in float32 or float64.
    return float(np.nextafter(np.float32(imp[allowed]), np.float32(np.inf)))


# ---------------------------------------------------------------- embeddings


def l2_normalise(x: np.ndarray, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    """Unit rows; float32 input stays float32 (large baseline vectors), anything else -> float64."""
    x = np.asarray(x)
    if x.dtype != np.float32:
        x = x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), eps)


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of every row of ``a`` (n, d) with every row of ``b`` (m, d) -> (n, m)."""
    return l2_normalise(np.atleast_2d(a)) @ l2_normalise(np.atleast_2d(b)).T


def verification_pairs(labels, n_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Balanced single-image pairs: ``(i, j, same)`` with half genuine and half impostor pairs.

    Genuine pairs draw a class (uniformly over classes with >= 2 images) then two distinct images;
    impostor pairs draw two distinct classes then one image from each. Uniform over classes so
    big folders do not dominate.
    """
    a, b, same = _pairs(np.asarray(labels), 1, n_pairs, rng)
    return a[:, 0], b[:, 0], same


def set_pairs(labels, n_s: int, n_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Balanced pairs of image *sets*: ``(A, B, same)`` with A, B index arrays (n_pairs, n_s).

    Paper 000 Table 2 protocol: each side is N_S images whose embeddings are averaged. In a
    genuine pair both sides come from one class and share no image (the class needs 2*N_S images).
    """
    return _pairs(np.asarray(labels), n_s, n_pairs, rng)


def _pairs(labels: np.ndarray, n_s: int, n_pairs: int, rng: np.random.Generator):
    classes, inverse = np.unique(labels, return_inverse=True)
    members = [np.nonzero(inverse == c)[0] for c in range(classes.size)]
    gen_ok = [c for c, m in enumerate(members) if m.size >= 2 * n_s]
    imp_ok = [c for c, m in enumerate(members) if m.size >= n_s]
    if not gen_ok:
        raise ValueError(f"no class has {2 * n_s} images for genuine pairs with N_S={n_s}")
    if len(imp_ok) < 2:
        raise ValueError(f"need two classes with >= {n_s} images for impostor pairs")
    n_gen = n_pairs // 2
    n_imp = n_pairs - n_gen
    A = np.empty((n_pairs, n_s), dtype=np.int64)
    B = np.empty((n_pairs, n_s), dtype=np.int64)
    for p in range(n_gen):
        m = members[gen_ok[rng.integers(len(gen_ok))]]
        pick = rng.choice(m, size=2 * n_s, replace=False)
        A[p], B[p] = pick[:n_s], pick[n_s:]
    for p in range(n_gen, n_pairs):
        ca, cb = rng.choice(len(imp_ok), size=2, replace=False)
        A[p] = rng.choice(members[imp_ok[ca]], size=n_s, replace=False)
        B[p] = rng.choice(members[imp_ok[cb]], size=n_s, replace=False)
    same = np.r_[np.ones(n_gen, bool), np.zeros(n_imp, bool)]
    return A, B, same


def pair_scores(emb: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of the mean embeddings of index sets ``a`` and ``b`` (rows of (P, n_s))."""
    e = l2_normalise(emb)
    a2 = a[:, None] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    if e.shape[1] > 4 * e.shape[0]:
        # wide vectors (PRNU residuals): everything follows from the Gram matrix, n^2 d once
        g = (e @ e.T).astype(np.float64)
        cross = g[a2[:, :, None], b2[:, None, :]].sum(axis=(1, 2))
        na = g[a2[:, :, None], a2[:, None, :]].sum(axis=(1, 2))
        nb = g[b2[:, :, None], b2[:, None, :]].sum(axis=(1, 2))
        return cross / np.sqrt(np.maximum(na * nb, 1e-24))
    # chunk over pairs so (chunk, n_s, d) stays ~64 MB even for 65k-dim PRNU residuals
    step = max(1, int(16_000_000 // max(1, a2.shape[1] * e.shape[1])))
    out = np.empty(a2.shape[0], dtype=np.float64)
    for i in range(0, a2.shape[0], step):
        fa = l2_normalise(e[a2[i:i + step]].mean(axis=1, dtype=np.float64))
        fb = l2_normalise(e[b2[i:i + step]].mean(axis=1, dtype=np.float64))
        out[i:i + step] = np.sum(fa * fb, axis=1)
    return out
