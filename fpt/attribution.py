"""Identify / verify / lineage on embeddings: pure functions over arrays and a Gallery.

Scores are cosine similarities of unit-norm embeddings (paper 001 §IV-A): an image is attributed
to the enrolled model whose fingerprint (mean embedding) is closest, or to *unknown* when the best
score is below the gallery's calibrated threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fpt.errors import InputError
from fpt.gallery import DEFAULT_FAR, Gallery
from fpt.metrics.verification import best_accuracy, cosine_matrix, l2_normalise, set_pairs, threshold_at_far

UNKNOWN = "unknown"


@dataclass
class Identification:
    path: str | None
    model: str  # best model, or "unknown"
    score: float  # best cosine similarity
    best_model: str  # best model even when below threshold
    top: list[tuple[str, float]]  # top-k (model, score), best first
    threshold: float | None
    low_confidence: bool = False

    @property
    def identified(self) -> bool:
        return self.model != UNKNOWN


def identification_record(r: Identification) -> dict:
    """The JSON record of one identified image: ``fpt identify --json`` results and ``--jsonl`` lines.

    The one place that decides a result's fields, so the two outputs cannot drift apart.
    """
    return {"path": r.path, "model": r.model, "score": r.score, "best_model": r.best_model,
            "top": [{"model": m, "score": s} for m, s in r.top], "low_confidence": r.low_confidence}


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
    return np.take_along_axis(part, np.lexsort((part, -vals), axis=-1), axis=1)


def identify_embeddings(g: Gallery, emb: np.ndarray, *, top_k: int = 3, threshold: float | None = None,
                        paths: list[str | None] | None = None, low_confidence: np.ndarray | None = None,
                        fingerprints: tuple[list[str], np.ndarray] | None = None) -> list[Identification]:
    """Rank the gallery's models for each row of ``emb``; below ``threshold`` -> unknown.

    ``threshold=None`` uses the gallery's calibrated threshold (if it has none, every probe is
    attributed to its best model and the caller should warn). ``fingerprints`` is
    ``g.fingerprint_matrix()`` computed once by callers that identify chunk after chunk.
    """
    names, fps = fingerprints if fingerprints is not None else g.fingerprint_matrix()
    if not names:
        raise InputError("the gallery has no models", path=g.path, hint="enroll some: fpt enroll MODEL IMAGES...")
    emb = np.atleast_2d(np.asarray(emb, np.float32))
    if emb.shape[1] != fps.shape[1]:
        raise InputError(f"embeddings have {emb.shape[1]} dims, gallery fingerprints {fps.shape[1]}", path=g.path)
    t = threshold if threshold is not None else (g.calibration.threshold if g.calibration else None)
    # float64 then rounded to float32: a float32 matrix product rounds differently with the number
    # of probes (BLAS picks other kernels), and a probe's score must not depend on which probes it
    # was scored with (chunked --jsonl scans, torchrun ranks and --json must agree to the bit)
    sims = cosine_matrix(emb.astype(np.float64), fps.astype(np.float64)).astype(np.float32)
    k = max(1, min(top_k, len(names)))
    order = top_k_indices(sims, k)
    out = []
    for i in range(emb.shape[0]):
        top = [(names[j], float(sims[i, j])) for j in order[i]]
        best, score = top[0]
        decided = best if (t is None or score >= t) else UNKNOWN
        out.append(Identification(
            path=None if paths is None else paths[i], model=decided, score=score, best_model=best,
            top=top, threshold=t,
            low_confidence=bool(low_confidence[i]) if low_confidence is not None else False))
    return out


@dataclass
class Verification:
    similarity: float
    same_model: bool
    threshold: float
    threshold_source: str  # "--threshold", "gallery (FAR 0.05, N_S=5)", ...
    n_a: int
    n_b: int
    low_confidence: bool = False


def set_fingerprint(emb: np.ndarray) -> np.ndarray:
    """Normalised mean of unit embeddings: the fingerprint of a set of N_S images (paper 000 §5)."""
    return l2_normalise(l2_normalise(np.atleast_2d(emb)).mean(axis=0))


def verify_embeddings(a: np.ndarray, b: np.ndarray, threshold: float, source: str = "--threshold",
                      low_confidence: bool = False) -> Verification:
    fa, fb = set_fingerprint(a), set_fingerprint(b)
    s = float(np.dot(fa, fb))
    return Verification(s, s >= threshold, float(threshold), source, len(np.atleast_2d(a)), len(np.atleast_2d(b)),
                        low_confidence)


@dataclass
class VerifyCalibration:
    threshold: float
    n_s: int
    far: float
    expected_far: float
    expected_frr: float
    pairs: int


def verify_threshold(g: Gallery, n_s: int, far: float = DEFAULT_FAR, n_pairs: int = 2000,
                     seed: int = 0) -> VerifyCalibration:
    """Threshold for set-vs-set verification with ``n_s`` images a side, from the gallery's images.

    Builds balanced genuine / impostor set pairs from the enrolled embeddings (models with fewer
    than ``2 * n_s`` images give only impostor sides) and takes the threshold at ``far``.
    ``n_s`` is capped at what the gallery can supply.
    """
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
    s = np.sum(fa * fb, axis=1)
    t = threshold_at_far(s, same, far=far)
    return VerifyCalibration(float(t), n_eff, far, float(np.mean(s[~same] >= t)), float(np.mean(s[same] < t)),
                             int(n_pairs))


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
        ax.set_xlabel("cosine distance between fingerprints (1 - cosine similarity)")
        ax.set_title(title)
        return save_figure(fig, out)


def lineage(names: list[str], fingerprints: np.ndarray) -> Lineage:
    """Average-linkage hierarchical clustering of fingerprints under cosine distance (paper 001 §IV-D)."""
    from scipy.cluster.hierarchy import linkage as _linkage
    from scipy.spatial.distance import pdist

    if len(names) < 2:
        raise InputError("lineage needs at least two models", hint="enroll more models")
    fp = l2_normalise(np.asarray(fingerprints, np.float64))
    d = np.clip(pdist(fp, metric="cosine"), 0.0, 2.0)
    return Lineage(list(names), _linkage(d, method="average"), d)


__all__ = ["UNKNOWN", "Identification", "identification_record", "failure_record", "identify_embeddings", "top_k_indices", "Verification", "verify_embeddings",
           "set_fingerprint", "VerifyCalibration", "verify_threshold", "gallery_embeddings", "Lineage",
           "lineage", "best_accuracy"]
