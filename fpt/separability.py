"""Fingerprint-space analysis (paper 002 §F.3-F.4): separability of models and NMI by design factor.

Input is a set of fingerprint rows (one per image) with a model label per row — from an ``.npz``
of embeddings, from a folder tree embedded with a representation, or from a synthetic-model pool
— and optionally a table ``model -> {factor: value}`` (a user CSV, or parsed from synthetic
architecture ids).

- :func:`separability`: FD ratio, k-means NMI against the model labels (k = number of models),
  silhouette and Davies-Bouldin of the model labels.
- :func:`factor_nmi`: for each factor, k-means with k = number of distinct values of that factor,
  NMI between clusters and the factor's labelling of the rows (paper 002 Table 6's question: which
  design choice do the fingerprint clusters follow?). ``unit="model"`` clusters per-model mean
  fingerprints instead of single images.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fpt.errors import ConfigError, InputError
from fpt.metrics.clustering import davies_bouldin, fd_ratio_details, kmeans, nmi, silhouette

#: k-means on more rows than this is run on a seeded subsample (k-means is O(n k d) per step).
MAX_KMEANS_ROWS = 20000


@dataclass
class Separability:
    n: int
    dim: int
    models: list[str]
    counts: dict
    fdr: float | None
    inter_fd: float | None
    intra_fd: float | None
    nmi_kmeans: float
    silhouette: float | None
    davies_bouldin: float | None
    notes: list[str] = field(default_factory=list)


@dataclass
class FactorNMI:
    factor: str
    nmi: float
    k: int  # clusters = distinct values of the factor among the rows
    values: dict  # value -> rows
    unit: str


def standardise(x: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per column (constant columns left at 0), for ``standardize=True``."""
    x = np.asarray(x, dtype=np.float64)
    sd = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def separability(features: np.ndarray, labels: Sequence[str], *, seed: int = 0,
                 standardize: bool = False) -> Separability:
    """FDR, k-means NMI vs the model labels, silhouette and Davies-Bouldin of one fingerprint set.

    FDR always uses the raw features (as the paper). With ``standardize`` the clustering scores
    use z-scored columns (for features mixing units); by default they use the raw features too,
    since z-scoring lifts pure-noise dimensions to the weight of informative ones.
    """
    x = np.asarray(features, dtype=np.float64)
    labels = np.asarray([str(v) for v in labels])
    if x.ndim != 2 or x.shape[0] != labels.size:
        raise ConfigError(f"{x.shape[0] if x.ndim else 0} fingerprint rows but {labels.size} labels")
    models, counts = np.unique(labels, return_counts=True)
    if models.size < 2:
        raise ConfigError("analysis needs fingerprints of at least two models",
                          hint="give a folder with one sub-folder per model")
    notes: list[str] = []
    keep = np.isin(labels, models[counts >= 4])
    fdr = inter = intra = None
    if (counts >= 4).sum() >= 2:
        if not keep.all():
            notes.append("FDR skips models with fewer than 4 images: "
                         + ", ".join(models[counts < 4].tolist()))
        det = fd_ratio_details(x[keep], labels[keep], seed=seed)
        fdr, inter, intra = det.ratio, det.inter, det.intra
    else:
        notes.append("FDR needs at least two models with 4+ images")
    xs = standardise(x) if standardize else x
    km_rows = np.arange(x.shape[0])
    if x.shape[0] > MAX_KMEANS_ROWS:
        km_rows = np.sort(np.random.default_rng(seed).choice(x.shape[0], MAX_KMEANS_ROWS, replace=False))
        notes.append(f"k-means / silhouette on a random {MAX_KMEANS_ROWS}-row subsample")
    clusters = kmeans(xs[km_rows], int(models.size), seed=seed)
    sil = db = None
    if models.size < km_rows.size:
        sil = silhouette(xs[km_rows], labels[km_rows])
        db = davies_bouldin(xs[km_rows], labels[km_rows])
    return Separability(
        n=int(x.shape[0]), dim=int(x.shape[1]), models=models.tolist(),
        counts={m: int(c) for m, c in zip(models, counts)}, fdr=fdr, inter_fd=inter, intra_fd=intra,
        nmi_kmeans=nmi(clusters, labels[km_rows]), silhouette=sil, davies_bouldin=db, notes=notes,
    )


def factor_nmi(
    features: np.ndarray,
    labels: Sequence[str],
    table: Mapping[str, Mapping[str, str]],
    *,
    factors: Sequence[str] | None = None,
    unit: str = "image",
    seed: int = 0,
    standardize: bool = False,
) -> list[FactorNMI]:
    """NMI between k-means clusters of fingerprints and each design factor (see module docs).

    Rows whose model is missing from ``table`` are an error (a silent drop would bias the NMI).
    Factors taking a single value over the rows carry no information and are skipped.
    """
    x = np.asarray(features, dtype=np.float64)
    labels = np.asarray([str(v) for v in labels])
    missing = sorted(set(labels) - set(table))
    if missing:
        raise ConfigError(f"no design factors for model(s): {', '.join(missing[:5])}"
                          + (" ..." if len(missing) > 5 else ""), hint="add them to the factor CSV")
    if unit not in ("image", "model"):
        raise ConfigError(f"unknown unit {unit!r}", hint="use image or model")
    if unit == "model":
        models = sorted(set(labels))
        x = np.stack([x[labels == m].mean(axis=0) for m in models])
        labels = np.asarray(models)
    names = list(factors) if factors else sorted({f for row in table.values() for f in row})
    xs = standardise(x) if standardize else x
    out: list[FactorNMI] = []
    for f in names:
        vals = np.asarray([str(table[m].get(f, "")) for m in labels])
        uniq, cnt = np.unique(vals, return_counts=True)
        if uniq.size < 2:
            continue
        if uniq.size > xs.shape[0]:
            continue
        clusters = kmeans(xs, int(uniq.size), seed=seed)
        out.append(FactorNMI(f, nmi(clusters, vals), int(uniq.size), {u: int(c) for u, c in zip(uniq, cnt)}, unit))
    if not out:
        raise ConfigError("no factor varies across these models; nothing to measure")
    return out


# ----------------------------------------------------------------------------------- inputs


def read_factor_csv(path: str | Path) -> dict[str, dict[str, str]]:
    """``model,upsampling,normalisation,...`` -> {model: {factor: value}}; the first column is the model."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such factor CSV", path=path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read factor CSV ({exc})", path=path) from exc
    rows = [r for r in rows if r and any(c.strip() for c in r)]
    if len(rows) < 2 or len(rows[0]) < 2:
        raise InputError("factor CSV needs a header (model,factor1,...) and one row per model", path=path)
    header = [h.strip() for h in rows[0]]
    table: dict[str, dict[str, str]] = {}
    for i, r in enumerate(rows[1:], start=2):
        if len(r) != len(header):
            raise InputError(f"line {i} has {len(r)} fields, the header has {len(header)}", path=path)
        model = r[0].strip()
        if model in table:
            raise InputError(f"model {model!r} appears twice (line {i})", path=path)
        table[model] = {h: v.strip() for h, v in zip(header[1:], r[1:])}
    return table


def synth_factor_table(models: Sequence[str]) -> dict[str, dict[str, str]]:
    """Design factors of synthetic models from their ids.

    Accepts pool ids (``K2-L1-post-deconv-relu-bn/s003``), folder labels whose first path part
    is an architecture id (``K2-L1-post-deconv-relu-bn/s003`` as a folder tree) and ids with a
    ``-s003`` / ``_s003`` seed suffix.
    """
    import re

    from fpt.synth.space import factors, parse_arch_id

    table = {}
    for m in models:
        head = m.strip("/").split("/")[0]
        head = re.sub(r"[-_]s\d+$", "", head)
        try:
            table[m] = factors(parse_arch_id(head))
        except ConfigError:
            raise ConfigError(f"model {m!r} is not named by a synthetic architecture id",
                              hint="use --factors FILE.csv for other models") from None
    return table


def load_npz(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """Fingerprint rows and model labels from an ``.npz`` (``fpt embed`` or numpy.savez).

    Accepted keys: features under ``embeddings`` / ``features`` / ``x``; labels under ``labels`` /
    ``models`` / ``model``; otherwise labels come from the parent folder of ``paths``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", path=path)
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"not a readable .npz file ({exc})", path=path) from exc
    with data:
        keys = set(data.files)
        fkey = next((k for k in ("embeddings", "features", "x") if k in keys), None)
        if fkey is None:
            raise InputError(f"no embeddings in the .npz (keys: {', '.join(sorted(keys))})", path=path,
                             hint="expected an 'embeddings' array as written by fpt embed")
        lkey = next((k for k in ("labels", "models", "model") if k in keys), None)
        try:  # members load lazily: an object (pickled) array or a non-numeric one fails here
            x = np.asarray(data[fkey], dtype=np.float64)
            if lkey is not None:
                labels = [str(v) for v in data[lkey].tolist()]
            elif "paths" in keys:
                labels = [Path(str(p)).parent.name for p in data["paths"].tolist()]
            else:
                raise InputError("the .npz has no labels or paths to take model names from", path=path)
        except (ValueError, TypeError, OSError) as exc:
            why = ("it holds pickled object arrays, which fpt never loads" if "allow_pickle" in str(exc)
                   else f"{type(exc).__name__}: {exc}")
            raise InputError(f"unusable .npz ({why})", path=path,
                             hint="expected numeric arrays as written by fpt embed or numpy.savez") from None
    if x.ndim != 2 or x.shape[0] != len(labels):
        raise InputError(f"embeddings {x.shape} do not match {len(labels)} labels", path=path)
    return x, labels


def folder_labels(root: Path, files: Sequence[Path]) -> list[str]:
    """Model label of each image = its folder relative to ``root`` (``stylegan2``, ``biggan/fake``)."""
    labels = []
    for p in files:
        rel = p.parent.relative_to(root)
        labels.append(rel.as_posix() if rel.parts else root.name)
    return labels


def embed_files(files: Sequence[Path], embed: Callable[[list], np.ndarray], batch: int = 64,
                on_progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, list[Path], list[tuple[str, str]]]:
    """Embed images batch by batch; returns rows, the files embedded, and (file, reason) failures."""
    from fpt.images import LoadFailure, iter_images

    rows, kept, failed, buf, bufp = [], [], [], [], []
    for p, img in iter_images(files):
        if isinstance(img, LoadFailure):
            failed.append((str(p), img.reason))
        else:
            buf.append(img)
            bufp.append(p)
        if len(buf) >= batch:
            rows.append(embed(buf))
            kept += bufp
            buf, bufp = [], []
        if on_progress:
            on_progress(1)
    if buf:
        rows.append(embed(buf))
        kept += bufp
    if not rows:
        raise InputError("none of the images could be read")
    return np.concatenate(rows), kept, failed


def embed_pool(
    pool_path: str | Path,
    real: str | Path | Sequence[str | Path],
    embed: Callable[[list], np.ndarray],
    *,
    per_model: int = 16,
    size: int | None = None,
    models: str = "*",
    seed: int = 0,
    device: str = "cpu",
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Fingerprint rows of every model in a synthetic pool (model by model: bounded memory).

    Every model is applied to the SAME ``per_model`` real crops (seeded), so rows differ by model
    only, not by content; crop side = ``size`` or the pool's training crop size. Grid generators
    get their noise from a generator seeded per model.
    """
    import fnmatch
    import random

    import torch

    from fpt.images import LoadFailure, find_images, iter_images, random_crop
    from fpt.synth.nets import fingerprint
    from fpt.synth.pool import Pool

    files = find_images(real)
    rnd = random.Random(seed)
    files = rnd.sample(files, min(len(files), per_model * 3))  # spares for unreadable files
    with Pool.open(pool_path) as pool:
        ids = [m for m in pool.model_ids if fnmatch.fnmatchcase(m, models) or fnmatch.fnmatchcase(m.split("/")[0], models)]
        if not ids:
            raise ConfigError(f"no model in the pool matches {models!r}", hint="see fpt synth info POOL")
        side = int(size or pool.record(ids[0]).size or 64)
        gen = torch.Generator().manual_seed(seed)
        crops = []
        for _, img in iter_images(files):
            if not isinstance(img, LoadFailure):
                crops.append(random_crop(img, side, gen))
            if len(crops) == per_model:
                break
        if len(crops) < 2:
            raise InputError("too few readable real images to drive the pool's models", path=str(real))
        batch = torch.stack(crops).to(device)
        rows, labels = [], []
        for i, mid in enumerate(ids):
            model = pool.load(mid, device=device)
            g = torch.Generator(device=batch.device).manual_seed(seed * 1_000_003 + i)
            out = fingerprint(model, pool.spec(mid), batch, generator=g).cpu()
            rows.append(np.asarray(embed(list(out)), dtype=np.float64))
            labels += [mid] * out.shape[0]
            if on_progress:
                on_progress(i + 1, len(ids))
    return np.concatenate(rows), labels


# ------------------------------------------------------------------ fpt analyse: inputs


@dataclass
class Fingerprints:
    """Rows to analyse and their model labels, from an .npz, a folder tree or a pool."""

    x: np.ndarray  # (n, d)
    labels: list[str]
    name: str  # the representation (or the .npz file name)
    kind: str  # "npz" | "folder" | "pool"
    paths: list[Path] | None = None  # folder inputs: the images embedded
    failures: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    @property
    def default_unit(self) -> str:
        """Pools cluster per-model means: all their models see the same crops, so single images
        would cluster by content."""
        return "model" if self.kind == "pool" else "image"

    @property
    def default_factors(self) -> str:
        return "synth" if self.kind == "pool" else ""

    def save(self, path: str | Path) -> Path:
        """The rows as an .npz that :func:`load_npz` (and ``fpt analyse``) reads back."""
        from fpt.storage import atomic_path

        arrays = {"embeddings": self.x.astype(np.float32), "labels": np.array(self.labels)}
        if self.paths is not None:
            arrays["paths"] = np.array([str(q) for q in self.paths])
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays, representation=self.name)
        return Path(path)


#: on_progress(what, done, total): total None while unknown.
Progress = Callable[[str, int, "int | None"], None]


def representation_embedder(name: str, manifold: str | Path | None, device: str) -> tuple[Callable[[list], np.ndarray], str]:
    """(embed(list[Tensor]) -> rows, display name) from fpt eval's registry of representations."""
    from fpt.representations import build_representation

    name = name.strip().lower()
    if name.startswith("artifact-") and manifold is None:
        raise ConfigError(f"representation {name} needs --manifold", hint="build one with fpt manifold build")
    rep = build_representation(name, device=device, manifold=str(manifold) if manifold else None)
    return rep.embed_images, rep.name


def load_fingerprints(source: Path, *, representation: str = "artifact-rgb", manifold: Path | None = None,
                      per_model: int = 0, real: Path | None = None, models: str = "*", crop: int = 64,
                      seed: int = 0, device: str = "auto", on_progress: Progress | None = None) -> Fingerprints:
    """Dispatch on ``source``: an .npz of embeddings, a ROOT folder (one sub-folder per model,
    at most ``per_model`` seeded images of each), or a synthetic pool (.h5, applied to ``real``)."""
    tick = on_progress or (lambda what, done, total: None)
    if source.is_file() and source.suffix == ".npz":
        x, labels = load_npz(source)
        return Fingerprints(x, labels, source.name, "npz")
    if source.is_dir():
        import random

        from fpt.images import find_images

        files = find_images(source)
        if per_model:
            rng = random.Random(seed)
            by: dict[str, list] = {}
            for f, lab in zip(files, folder_labels(source, files)):
                by.setdefault(lab, []).append(f)
            files = sorted(f for fs in by.values() for f in (rng.sample(fs, per_model) if len(fs) > per_model else fs))
        embed, name = representation_embedder(representation, manifold, device)
        done = [0]

        def advance(n: int) -> None:
            done[0] += n
            tick(f"embedding ({name})", done[0], len(files))

        x, kept, failures = embed_files(files, embed, on_progress=advance)
        return Fingerprints(x, folder_labels(source, kept), name, "folder", kept, failures)
    if source.is_file() and source.suffix in (".h5", ".hdf5"):
        if real is None:
            raise ConfigError("analysing a synthetic pool needs --real DIR (the images its models are applied to)")
        from fpt.devices import select_device

        embed, name = representation_embedder(representation, manifold, device)
        tick(f"pool models ({name})", 0, None)
        x, labels = embed_pool(source, real, embed, per_model=per_model or 16, size=crop, models=models, seed=seed,
                               device=str(select_device(device)),
                               on_progress=lambda d, t: tick(f"pool models ({name})", d, t))
        return Fingerprints(x, labels, name, "pool")
    raise InputError("not a folder, an .npz file or a pool (.h5)", path=source)


def plot_embedding(features: np.ndarray, labels: Sequence[str], path: str | Path, title: str) -> Path:
    """2-D PCA scatter of fingerprints coloured by model (cf. paper 002 Fig. 1), as PNG."""
    from fpt.report import pyplot, save_figure

    x = np.asarray(features, dtype=np.float64)
    x = x - x.mean(axis=0)
    # PCA through the small Gram matrix: n x n, whatever the feature width.
    gram = x @ x.T
    vals, vecs = np.linalg.eigh(gram)
    order = np.argsort(vals)[::-1][:2]
    coords = vecs[:, order] * np.sqrt(np.maximum(vals[order], 0.0))
    share = vals[order] / max(float(vals.sum()), 1e-300)
    labels = np.asarray([str(v) for v in labels])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 6), layout="constrained")
    cmap = plt.get_cmap("tab20")
    for i, m in enumerate(sorted(set(labels))):
        sel = labels == m
        ax.scatter(coords[sel, 0], coords[sel, 1], s=10, alpha=0.75, color=cmap(i % 20), label=m)
    ax.set_xlabel(f"PC1 ({100 * share[0]:.1f}% of variance)")
    ax.set_ylabel(f"PC2 ({100 * share[1]:.1f}%)" if share.size > 1 else "PC2")
    ax.set_title(title)
    if len(set(labels)) <= 24:
        ax.legend(fontsize=7, markerscale=1.5, loc="best")
    return save_figure(fig, path)
