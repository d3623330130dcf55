"""Clustering and separability metrics for fingerprint embeddings (paper 002 §F.3-F.4).

All functions take features as an (n, d) array and integer or string labels of length n, use
NumPy / SciPy only, and are deterministic given their ``seed``.

- :func:`fd_ratio` — Fréchet-distance ratio (FDR) exactly as paper 002 §F.4: for each class the
  features are split at random into two disjoint halves of equal size and the Fréchet distance
  (FD) between the halves is taken; the intra-class FD is the mean over classes. The inter-class
  FD is the mean FD over every unordered pair of distinct classes (all of each class's samples).
  FDR = inter / intra; larger means better separated classes.
- :func:`nmi` — normalised mutual information with the arithmetic-mean normaliser
  ``I(A;B) / ((H(A) + H(B)) / 2)`` (the usual default, e.g. scikit-learn's), in [0, 1].
- :func:`kmeans` — Lloyd's algorithm with k-means++ seeding and several restarts.
- :func:`silhouette` — mean silhouette coefficient, Euclidean distance; samples in singleton
  clusters score 0 (Rousseeuw's convention).
- :func:`davies_bouldin` — Davies-Bouldin index, Euclidean; lower is better.

Fréchet distances come from :func:`fpt.metrics.frechet.frechet_distance` (exact for any d).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.distance import cdist

from fpt.metrics.frechet import frechet_distance

__all__ = [
    "FDRResult",
    "KMeansResult",
    "davies_bouldin",
    "encode_labels",
    "fd_ratio",
    "fd_ratio_details",
    "kmeans",
    "kmeans_fit",
    "nmi",
    "silhouette",
]

#: Rows of the distance matrix computed at once by :func:`silhouette` (bounds memory to
#: CHUNK x n doubles).
_CHUNK = 1024


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def encode_labels(labels: Sequence | np.ndarray) -> tuple[np.ndarray, list]:
    """Map arbitrary hashable labels to 0..k-1 (in sorted order of the distinct values)."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {arr.shape}")
    classes, codes = np.unique(arr, return_inverse=True)
    return codes.astype(np.int64), classes.tolist()


def isometric_rows(x: np.ndarray) -> np.ndarray:
    """Rows re-expressed in the span of the centred data: same pairwise distances, <= n columns.

    k-means, silhouette and Davies-Bouldin depend only on Euclidean distances between rows and
    their centroids, which an isometry preserves; when d > n (artifacts: 12 288 dims for a few
    hundred images) working in the n-dimensional row space is exact and several times faster.
    """
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    if d <= n:
        return x
    xc = x - x.mean(axis=0)
    vals, vecs = np.linalg.eigh(xc @ xc.T)
    keep = vals > max(float(vals.max()), 0.0) * 1e-12
    return vecs[:, keep] * np.sqrt(vals[keep])


def _check_xy(x: np.ndarray, labels: Sequence | np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be (n, d), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or infinite values")
    codes, classes = encode_labels(labels)
    if codes.shape[0] != x.shape[0]:
        raise ValueError(f"{x.shape[0]} feature rows but {codes.shape[0]} labels")
    return x, codes, classes


# --------------------------------------------------------------------------------------------
# Fréchet distance and the FD ratio
# --------------------------------------------------------------------------------------------


#: Largest sample count for which all inter-class FDs come from one N x N Gram matrix.
_GRAM_MAX_ROWS = 8000


def _pairwise_frechet_gram(x: np.ndarray, members: list[np.ndarray]) -> np.ndarray:
    """FD between every pair of classes at once, exact, for wide features (d > class sizes).

    Same identity as :func:`fpt.metrics.frechet.frechet_lowrank`, with every cross product
    ``A_i A_j^T`` read off one
    Gram matrix of the class-centred rows: one large matrix product instead of k^2/2 small ones
    (per-pair BLAS calls dominate when there are hundreds of classes).
    """
    x = x - x.mean(axis=0)  # global centring: less cancellation in |mu_i - mu_j|^2
    k = len(members)
    mus = np.stack([x[m].mean(axis=0) for m in members])
    blocks = [(x[m] - mus[c]) / np.sqrt(m.size - 1) for c, m in enumerate(members)]
    offsets = np.cumsum([0] + [b.shape[0] for b in blocks])
    c_all = np.concatenate(blocks)
    gram = c_all @ c_all.T
    traces = np.array([np.trace(gram[offsets[c]:offsets[c + 1], offsets[c]:offsets[c + 1]]) for c in range(k)])
    mm = mus @ mus.T
    sq = np.diag(mm)
    out = np.zeros((k, k))
    for i, j in itertools.combinations(range(k), 2):
        cross = gram[offsets[i]:offsets[i + 1], offsets[j]:offsets[j + 1]]
        nuc = np.linalg.svd(cross, compute_uv=False).sum()
        value = sq[i] + sq[j] - 2.0 * mm[i, j] + traces[i] + traces[j] - 2.0 * nuc
        out[i, j] = out[j, i] = max(float(value), 0.0)
    return out


@dataclass
class FDRResult:
    """Outcome of :func:`fd_ratio_details`."""

    ratio: float
    inter: float
    intra: float
    classes: list
    intra_per_class: dict = field(default_factory=dict)
    inter_per_pair: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "fdr": self.ratio,
            "inter_fd": self.inter,
            "intra_fd": self.intra,
            "classes": [str(c) for c in self.classes],
            "intra_per_class": {str(k): v for k, v in self.intra_per_class.items()},
            "inter_per_pair": {f"{a}|{b}": v for (a, b), v in self.inter_per_pair.items()},
        }


def fd_ratio_details(features: np.ndarray, labels: Sequence | np.ndarray, seed: int = 0) -> FDRResult:
    """FD ratio with its parts; see :func:`fd_ratio`."""
    x, codes, classes = _check_xy(features, labels)
    k = len(classes)
    if k < 2:
        raise ValueError("the FD ratio needs at least two classes")
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(codes == c) for c in range(k)]
    small = [str(classes[c]) for c in range(k) if members[c].size < 4]
    if small:
        raise ValueError(
            f"the FD ratio needs at least 4 samples per class (two halves of >= 2); too few in: {', '.join(small)}"
        )
    intra: dict = {}
    for c in range(k):
        idx = rng.permutation(members[c])
        half = idx.size // 2  # an odd sample out is dropped so both halves have equal size
        intra[classes[c]] = frechet_distance(x[idx[:half]], x[idx[half : 2 * half]])
    inter: dict = {}
    n_min = min(m.size for m in members)
    if n_min < x.shape[1] and x.shape[0] <= _GRAM_MAX_ROWS:
        fds = _pairwise_frechet_gram(x, members)
        for i, j in itertools.combinations(range(k), 2):
            inter[(classes[i], classes[j])] = fds[i, j]
    else:
        for i, j in itertools.combinations(range(k), 2):
            inter[(classes[i], classes[j])] = frechet_distance(x[members[i]], x[members[j]])
    intra_mean = float(np.mean(list(intra.values())))
    inter_mean = float(np.mean(list(inter.values())))
    ratio = inter_mean / intra_mean if intra_mean > 0 else float("inf")
    return FDRResult(ratio, inter_mean, intra_mean, classes, intra, inter)


def fd_ratio(features: np.ndarray, labels: Sequence | np.ndarray, seed: int = 0) -> float:
    """Fréchet-distance ratio (paper 002 Eq. 19, §F.4): mean inter-class FD / mean intra-class FD.

    Intra-class: each class's rows are split at random (``seed``) into two disjoint halves of
    equal size and the FD between the halves is averaged over classes. Inter-class: the FD
    between the full feature sets of two classes, averaged over every pair of distinct classes.
    Needs at least two classes and four samples per class.
    """
    return fd_ratio_details(features, labels, seed=seed).ratio


# --------------------------------------------------------------------------------------------
# NMI
# --------------------------------------------------------------------------------------------


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def nmi(labels_a: Sequence | np.ndarray, labels_b: Sequence | np.ndarray) -> float:
    """Normalised mutual information, ``I(A;B) / mean(H(A), H(B))``, in [0, 1].

    Labels may be any hashable values. Two constant labellings agree perfectly (1.0); a
    constant labelling against a varying one carries no information (0.0).
    """
    a, _ = encode_labels(labels_a)
    b, _ = encode_labels(labels_b)
    if a.shape != b.shape:
        raise ValueError(f"label arrays differ in length: {a.shape[0]} vs {b.shape[0]}")
    if a.size == 0:
        raise ValueError("no labels")
    ka, kb = a.max() + 1, b.max() + 1
    if ka == 1 and kb == 1:
        return 1.0
    table = np.zeros((ka, kb), dtype=np.float64)
    np.add.at(table, (a, b), 1.0)
    n = table.sum()
    pij = table / n
    pi = pij.sum(axis=1, keepdims=True)
    pj = pij.sum(axis=0, keepdims=True)
    nz = pij > 0
    mi = float((pij[nz] * np.log(pij[nz] / (pi @ pj)[nz])).sum())
    ha, hb = _entropy(table.sum(axis=1)), _entropy(table.sum(axis=0))
    denom = (ha + hb) / 2.0
    if denom <= 0:
        return 0.0
    return float(np.clip(mi / denom, 0.0, 1.0))


# --------------------------------------------------------------------------------------------
# k-means
# --------------------------------------------------------------------------------------------


@dataclass
class KMeansResult:
    labels: np.ndarray  # (n,) int64 in 0..k-1
    centroids: np.ndarray  # (k, d)
    inertia: float  # sum of squared distances to the assigned centroid
    n_iter: int


def _sq_dist(x: np.ndarray, c: np.ndarray, x_sq: np.ndarray) -> np.ndarray:
    d = x_sq[:, None] - 2.0 * (x @ c.T) + (c * c).sum(axis=1)[None, :]
    return np.maximum(d, 0.0)


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator, x_sq: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    centres = [x[rng.integers(n)]]
    closest = _sq_dist(x, centres[0][None, :], x_sq)[:, 0]
    for _ in range(1, k):
        total = closest.sum()
        # All points coincide with a centre already: any choice is as good as another.
        idx = rng.integers(n) if total <= 0 else rng.choice(n, p=closest / total)
        centres.append(x[idx])
        closest = np.minimum(closest, _sq_dist(x, x[idx][None, :], x_sq)[:, 0])
    return np.stack(centres)


def kmeans_fit(
    x: np.ndarray, k: int, seed: int = 0, n_init: int = 10, max_iter: int = 300, tol: float = 1e-7
) -> KMeansResult:
    """k-means (Lloyd) with k-means++ seeding; the best of ``n_init`` restarts by inertia."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be (n, d), got shape {x.shape}")
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of samples ({n}), got {k}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or infinite values")
    x_orig, x = x, isometric_rows(x)  # exact: k-means only sees distances
    rng = np.random.default_rng(seed)
    x_sq = (x * x).sum(axis=1)
    scale = float(np.mean(np.var(x, axis=0))) or 1.0
    best: KMeansResult | None = None
    for _ in range(max(1, n_init)):
        c = _kmeans_pp(x, k, rng, x_sq)
        labels = np.zeros(n, dtype=np.int64)
        it = 0
        for it in range(1, max_iter + 1):
            d = _sq_dist(x, c, x_sq)
            labels = d.argmin(axis=1)
            new_c = np.empty_like(c)
            for j in range(k):
                m = labels == j
                if m.any():
                    new_c[j] = x[m].mean(axis=0)
                else:
                    # Empty cluster: restart it at the point worst served by its centre.
                    far = int(d[np.arange(n), labels].argmax())
                    new_c[j] = x[far]
                    labels[far] = j
            shift = float(((new_c - c) ** 2).sum())
            c = new_c
            if shift <= tol * scale:
                break
        d = _sq_dist(x, c, x_sq)
        labels = d.argmin(axis=1)
        inertia = float(d[np.arange(n), labels].sum())
        if best is None or inertia < best.inertia:
            best = KMeansResult(labels.astype(np.int64), c, inertia, it)
    assert best is not None
    if x.shape[1] != x_orig.shape[1]:  # report centroids in the caller's feature space
        best.centroids = np.stack([x_orig[best.labels == j].mean(axis=0) if (best.labels == j).any()
                                   else np.full(x_orig.shape[1], np.nan) for j in range(k)])
    return best


def kmeans(x: np.ndarray, k: int, seed: int = 0, n_init: int = 10) -> np.ndarray:
    """Cluster rows of ``x`` into ``k`` groups; returns the (n,) int64 cluster index per row."""
    return kmeans_fit(x, k, seed=seed, n_init=n_init).labels


# --------------------------------------------------------------------------------------------
# silhouette and Davies-Bouldin
# --------------------------------------------------------------------------------------------


def silhouette(x: np.ndarray, labels: Sequence | np.ndarray) -> float:
    """Mean silhouette coefficient over all samples (Euclidean), in [-1, 1]; higher is better.

    s(i) = (b - a) / max(a, b), a = mean distance to the other members of i's cluster, b = the
    smallest mean distance to the members of another cluster. s(i) = 0 for singleton clusters.
    Memory is bounded: distances are computed in row chunks.
    """
    x, codes, classes = _check_xy(x, labels)
    n, k = x.shape[0], len(classes)
    if not 2 <= k <= n - 1:
        raise ValueError(f"silhouette needs between 2 and n-1 clusters, got {k} for {n} samples")
    x = isometric_rows(x)
    onehot = np.zeros((n, k))
    onehot[np.arange(n), codes] = 1.0
    sizes = onehot.sum(axis=0)
    scores = np.empty(n)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        sums = cdist(x[start:stop], x) @ onehot  # (chunk, k) summed distances per cluster
        own = codes[start:stop]
        rows = np.arange(stop - start)
        own_size = sizes[own]
        a = np.where(own_size > 1, sums[rows, own] / np.maximum(own_size - 1, 1), 0.0)
        means = sums / sizes[None, :]
        means[rows, own] = np.inf
        b = means.min(axis=1)
        denom = np.maximum(a, b)
        s = np.where(denom > 0, (b - a) / np.where(denom > 0, denom, 1.0), 0.0)
        scores[start:stop] = np.where(own_size > 1, s, 0.0)
    return float(scores.mean())


def davies_bouldin(x: np.ndarray, labels: Sequence | np.ndarray) -> float:
    """Davies-Bouldin index (Euclidean), >= 0; lower means tighter, better separated clusters.

    S_i = mean distance of cluster i's members to its centroid, M_ij = distance between
    centroids, DB = mean_i max_{j != i} (S_i + S_j) / M_ij.
    """
    x, codes, classes = _check_xy(x, labels)
    k = len(classes)
    if k < 2:
        raise ValueError("Davies-Bouldin needs at least two clusters")
    x = isometric_rows(x)
    cents = np.stack([x[codes == c].mean(axis=0) for c in range(k)])
    spread = np.array([np.linalg.norm(x[codes == c] - cents[c], axis=1).mean() for c in range(k)])
    m = cdist(cents, cents)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (spread[:, None] + spread[None, :]) / m
    # Coincident centroids: infinitely bad unless both clusters are points (then 0 by convention).
    r[(m == 0) & ((spread[:, None] + spread[None, :]) == 0)] = 0.0
    np.fill_diagonal(r, -np.inf)
    return float(r.max(axis=1).mean())
