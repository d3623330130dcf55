"""Closed- and open-set identification metrics on embeddings (NumPy only).

Same conventions as :mod:`fpt.metrics.verification` (scores are cosine similarities; higher =
more likely the same model). Protocols follow paper 001 §IV-A.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fpt.metrics.verification import cosine_matrix, l2_normalise, roc_auc

__all__ = ["macro_f1", "open_set_auroc", "k_shot_split", "identify_k_shot", "IdentificationResult", "fingerprints",
           "gallery_scores", "whitened_fingerprints"]


def macro_f1(y_true, y_pred, labels=None) -> float:
    """Unweighted mean of per-class F1 over ``labels`` (default: classes present in y_true).

    Classes predicted but absent from y_true are ignored unless listed in ``labels``; a class
    with no true and no predicted samples contributes F1 = 0 only if listed explicitly.
    """
    yt = np.asarray(y_true).ravel()
    yp = np.asarray(y_pred).ravel()
    if yt.shape != yp.shape:
        raise ValueError("y_true and y_pred differ in length")
    classes = np.unique(yt) if labels is None else np.asarray(list(labels))
    if classes.size == 0:
        raise ValueError("no classes")
    f1s = []
    for c in classes:
        tp = np.sum((yp == c) & (yt == c))
        fp = np.sum((yp == c) & (yt != c))
        fn = np.sum((yp != c) & (yt == c))
        denom = 2 * tp + fp + fn
        f1s.append(0.0 if denom == 0 else 2.0 * tp / denom)
    return float(np.mean(f1s))


def open_set_auroc(known_scores, unknown_scores) -> float:
    """AUROC of telling known-model probes (positives) from unknown-model probes by max score."""
    k = np.asarray(known_scores, dtype=np.float64).ravel()
    u = np.asarray(unknown_scores, dtype=np.float64).ravel()
    return roc_auc(np.r_[k, u], np.r_[np.ones(k.size, bool), np.zeros(u.size, bool)])


def k_shot_split(labels, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per class, ``k`` random indices for the gallery and the rest as probes.

    Classes with <= k images cannot give probes; they are still enrolled (they act as
    distractors, as an enrolled model with no test images would in practice).
    """
    labels = np.asarray(labels)
    gal, probe = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.nonzero(labels == c)[0])
        gal.extend(idx[:k])
        probe.extend(idx[k:])
    return np.sort(np.asarray(gal, dtype=np.int64)), np.sort(np.asarray(probe, dtype=np.int64))


@dataclass
class IdentificationResult:
    accuracy: float
    macro_f1: float
    classes: list
    y_true: np.ndarray
    y_pred: np.ndarray
    best_score: np.ndarray  # max cosine to any fingerprint, per probe
    gallery_idx: np.ndarray
    probe_idx: np.ndarray

    def per_class_accuracy(self) -> dict:
        return {c: float(np.mean(self.y_pred[self.y_true == c] == c)) for c in np.unique(self.y_true)}


def fingerprints(emb: np.ndarray, labels, idx: np.ndarray) -> tuple[list, np.ndarray]:
    """Mean L2-normalised embedding per class over rows ``idx``: ``(classes, (C, d))``."""
    from fpt.metrics.within_class import class_means

    classes, _, means = class_means(l2_normalise(emb[idx]), np.asarray(labels)[idx])
    return list(classes), l2_normalise(means)


def gallery_scores(emb: np.ndarray, labels, gal: np.ndarray, probe: np.ndarray,
                   shrinkage: float | None = None) -> tuple[list, np.ndarray, np.ndarray]:
    """Scores of the ``probe`` rows against the fingerprints of the ``gal`` rows' classes:
    ``(classes, raw cosines (P, C), ranking scores (P, C))``.

    With ``shrinkage``, the ranking scores are cosines after a within-class whitening fitted on the
    gallery rows themselves (:func:`fpt.metrics.within_class.fit_within_class`): the directions in
    which the enrolled images of one model vary are scaled down before ranking. Without it, or
    when the gallery cannot fit one (:func:`fpt.metrics.within_class.can_whiten`), they are the raw cosines.
    """
    from fpt.metrics.within_class import can_whiten

    labels = np.asarray(labels)
    classes, fp = fingerprints(emb, labels, gal)
    raw = cosine_matrix(emb[probe], fp)
    if shrinkage is None or not can_whiten(labels[gal]):
        return classes, raw, raw
    w, _, wfp = whitened_fingerprints(emb[gal], labels[gal], shrinkage)
    return classes, raw, cosine_matrix(w.apply(emb[probe]), wfp)


def whitened_fingerprints(emb: np.ndarray, labels, shrinkage: float):
    """A within-class whitening fitted on ``emb`` and the mean whitened embedding per class:
    ``(whitening, classes, (C, d) unit fingerprints)``, classes sorted."""
    from fpt.metrics.within_class import fit_within_class

    w = fit_within_class(emb, labels, shrinkage)
    classes, fps = fingerprints(w.apply(emb), labels, np.arange(len(emb)))
    return w, classes, fps


def identify_k_shot(emb: np.ndarray, labels, k: int = 10, rng: np.random.Generator | None = None,
                    split: tuple[np.ndarray, np.ndarray] | None = None,
                    shrinkage: float | None = None) -> IdentificationResult:
    """k-shot closed-set 1:N identification (paper 001 §IV-A).

    Each class's fingerprint is the mean of ``k`` of its embeddings; every other image is a probe
    assigned to the class of highest cosine similarity (with ``shrinkage``: after the gallery's
    own within-class whitening, :func:`gallery_scores`). Returns accuracy and macro-F1 over probes;
    ``best_score`` is the raw cosine to the assigned class.
    """
    labels = np.asarray(labels)
    if split is None:
        split = k_shot_split(labels, k, rng if rng is not None else np.random.default_rng(0))
    gal, probe = split
    if probe.size == 0:
        raise ValueError(f"no probe images left after taking {k} per class for the gallery")
    classes, raw, rank = gallery_scores(emb, labels, gal, probe, shrinkage)
    best = np.argmax(rank, axis=1)
    y_pred = np.asarray(classes, dtype=object)[best]
    y_true = labels[probe]
    y_pred = y_pred.astype(y_true.dtype) if y_true.dtype != object else y_pred
    return IdentificationResult(
        accuracy=float(np.mean(y_pred == y_true)),
        macro_f1=macro_f1(y_true, y_pred),
        classes=classes, y_true=y_true, y_pred=y_pred, best_score=raw[np.arange(len(best)), best],
        gallery_idx=gal, probe_idx=probe,
    )
