"""Projection onto the real-image manifold and the artifact of paper 002 (Def. 2.1).

Sign convention (one, everywhere in fpt): **a(x) = x - x\\***, the query's embedding minus the
embedding of its nearest real reference, as in paper 002 Eq. 2. (The paper's Fig. 4 caption and
the authors' code sometimes use x\\* - x; fpt never does.) In the freq space this is the log ratio
of magnitude spectra, ``log|F(x)| - log|F(x*)|``: positive where the query has *more* energy than
the closest real image.

The distance to the manifold is ``|a(x)|`` (L2 in the space). It is also given per dimension
(RMS) and as a percentile against the leave-one-out nearest-neighbour distances of real
references measured at build time: ~50 means "as close as a typical real image", ~100 "farther
than almost every real image is from the others".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fpt.errors import ConfigError
from fpt.manifold.spaces import SpaceEmbedder, fixed_view
from fpt.manifold.store import Manifold, ManifoldSpace

#: Images projected per search batch.
DEFAULT_BATCH = 256


@dataclass
class Projection:
    """One image projected onto one space of the manifold."""

    space: str
    nearest_index: int
    nearest_path: str
    distance: float  # |a(x)|, L2 in the space
    rms: float  # distance / sqrt(D)
    percentile: float | None  # vs leave-one-out NN distances of real references
    padded: bool  # image smaller than the view: mirror-padded, low confidence
    artifact: np.ndarray  # a(x) = x - x*, shape of one point of the space
    view: np.ndarray | None = None  # the fixed-size view of the query (3, S, S), for figures

    def summary(self) -> dict:
        return {
            "space": self.space,
            "nearest_index": self.nearest_index,
            "nearest_path": self.nearest_path,
            "distance": self.distance,
            "rms": self.rms,
            "percentile": self.percentile,
            "low_confidence": self.padded,
        }


class Projector:
    """Embeds images into one manifold space and finds their nearest references."""

    def __init__(self, manifold: Manifold, space: str | None = None):
        self.manifold = manifold
        self.space: ManifoldSpace = manifold.space(space)
        self.embedder = SpaceEmbedder(self.space.spec, manifold.device)
        if self.embedder.dim != self.space.dim:
            raise ConfigError(f"the {self.space.name} embedder gives {self.embedder.dim} dims but the manifold "
                              f"stores {self.space.dim}", hint="rebuild the manifold with this extractor")

    def views(self, images: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[bool]]:
        spec = self.space.spec
        out = [fixed_view(img, spec.size, spec.fit) for img in images]
        return torch.stack([v for v, _ in out]), [p for _, p in out]

    def project(self, images: Sequence[torch.Tensor], *, keep_views: bool = False,
                batch_size: int = DEFAULT_BATCH) -> list[Projection]:
        results: list[Projection] = []
        for s in range(0, len(images), batch_size):
            views, padded = self.views(images[s : s + batch_size])
            emb = self.embedder(views).cpu().numpy().astype(np.float32)
            nb = self.space.nearest(emb)
            refs = self.space.rows(nb.index)
            for j in range(emb.shape[0]):
                # Exact difference of the stored rows: a manifold member gives exactly zero.
                art = emb[j] - refs[j]
                dist = float(np.sqrt(nb.sq_distance[j]))
                results.append(Projection(
                    space=self.space.name,
                    nearest_index=int(nb.index[j]),
                    nearest_path=self.manifold.paths[int(nb.index[j])],
                    distance=dist,
                    rms=float(dist / np.sqrt(self.space.dim)),
                    percentile=self.space.percentile(dist),
                    padded=padded[j],
                    artifact=art.reshape(self.space.shape),
                    view=views[j].cpu().numpy() if keep_views else None,
                ))
        return results


# ----------------------------------------------------------------------------------- output


def _display(img: np.ndarray) -> np.ndarray:
    return np.clip(np.transpose(img, (1, 2, 0)), 0.0, 1.0)


def _signed(a: np.ndarray) -> tuple[np.ndarray, float]:
    """(H, W) signed map of a (3, H, W) artifact (channel mean) and its symmetric colour limit."""
    m = a.mean(axis=0)
    lim = float(np.percentile(np.abs(m), 99.5)) or 1e-6
    return m, lim


def save_projection_figure(proj: Projection, space: ManifoldSpace, path: Path, title: str) -> Path:
    """x, x*, a(x) (and for freq the spectra) as one PNG."""
    from fpt.manifold.spaces import log_magnitude
    from fpt.report import pyplot, save_figure

    plt = pyplot()
    ref = space.pixels(proj.nearest_index)
    freq = proj.space == "freq"
    feat = proj.space == "feat"
    ncols = 6 if freq else (3 if feat else 4)
    fig, axes = plt.subplots(1, ncols, figsize=(3.0 * ncols, 3.4), layout="constrained")
    axes[0].imshow(_display(proj.view))
    axes[0].set_title("x (query view)")
    if ref is not None:
        axes[1].imshow(_display(ref.numpy()))
        axes[1].set_title(f"x* (nearest real #{proj.nearest_index})")
    else:
        axes[1].text(0.5, 0.5, "pixels not stored", ha="center", va="center")
    if feat:
        axes[2].plot(proj.artifact.reshape(-1), lw=0.6)
        axes[2].set_title("a = x - x* (feature vector)")
    elif freq:
        def centred(img: torch.Tensor) -> np.ndarray:
            return np.fft.fftshift(log_magnitude(img[None], space.spec.freq_eps)[0].mean(0).numpy())

        q_spec = centred(torch.from_numpy(proj.view))
        # x*'s spectrum is q - a exactly (a is the difference of the stored log spectra).
        r_spec = q_spec - np.fft.fftshift(proj.artifact.mean(axis=0))
        a_spec = np.fft.fftshift(proj.artifact.mean(axis=0))
        lim = float(np.percentile(np.abs(a_spec), 99.5)) or 1e-6
        axes[2].imshow(r_spec, cmap="viridis")
        axes[2].set_title("log|F(x*)| (centred)")
        axes[3].imshow(q_spec, cmap="viridis")
        axes[3].set_title("log|F(x)| (centred)")
        im = axes[4].imshow(a_spec, cmap="RdBu_r", vmin=-lim, vmax=lim)
        axes[4].set_title("a = log|F(x)| - log|F(x*)|")
        fig.colorbar(im, ax=axes[4], fraction=0.046)
        # Azimuthal profile of the artifact: where in frequency the query departs from reality.
        h, w = a_spec.shape
        yy, xx = np.indices((h, w))
        r = np.hypot(yy - h // 2, xx - w // 2).round().astype(int)
        prof = np.bincount(r.ravel(), a_spec.ravel()) / np.maximum(np.bincount(r.ravel()), 1)
        k = min(h, w) // 2
        axes[5].plot(np.arange(k) / min(h, w), prof[:k])
        axes[5].axhline(0, color="grey", lw=0.5)
        axes[5].set_xlabel("frequency (cycles/px)")
        axes[5].set_title("radial mean of a")
    else:
        m, lim = _signed(proj.artifact)
        im = axes[2].imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim)
        axes[2].set_title("a = x - x* (channel mean)")
        fig.colorbar(im, ax=axes[2], fraction=0.046)
        # The artifact's own spectrum: periodic generator traces (grid peaks) show up here.
        spec = np.fft.fftshift(log_magnitude(torch.from_numpy(proj.artifact)[None], 1e-6)[0].mean(0).numpy())
        axes[3].imshow(spec, cmap="viridis")
        axes[3].set_title("log|F(a)| (centred)")
    for ax in axes[: (2 if feat else (5 if freq else 4))]:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{title}   |a| = {proj.distance:.4g}" + (f" ({proj.percentile:.0f}th pct of real)" if proj.percentile is not None else ""))
    return save_figure(fig, path)


def save_projection(proj: Projection, space: ManifoldSpace, out: Path, stem: str, *, figure: bool = True,
                    title: str = "") -> None:
    """``stem.npz`` (artifact, query and nearest views, distance) and, with ``figure``,
    ``stem.png`` under ``out``."""
    from fpt.storage import atomic_path

    ref = space.pixels(proj.nearest_index)
    with atomic_path(out / f"{stem}.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, artifact=proj.artifact, query_view=proj.view,
                                nearest_view=ref.numpy() if ref is not None else np.zeros(0),
                                nearest_index=proj.nearest_index, distance=proj.distance,
                                sign_convention="a = x - x*")
    if figure:
        save_projection_figure(proj, space, out / f"{stem}.png", title or stem)


def project_files(manifold: Manifold, files: Sequence[Path], spaces: Sequence[str] | None = None, *,
                  out: Path | None = None, figures: bool = True,
                  on_done: Callable[[Path], None] | None = None) -> tuple[list[dict], list[dict]]:
    """Project each readable image onto each space (default: all the manifold holds).

    Returns one row per (image, space), :meth:`Projection.summary` plus ``path``, and the
    unreadable files as ``{"path", "error"}``. With ``out``: :func:`save_projection` per row,
    named ``<image stem>.<space>``.
    """
    from fpt.images import LoadFailure, iter_images

    projectors = [Projector(manifold, n) for n in (spaces or manifold.spaces)]
    results, failures = [], []
    for path, img in iter_images(files):
        if on_done:
            on_done(path)
        if isinstance(img, LoadFailure):
            failures.append({"path": str(path), "error": img.reason})
            continue
        for pr in projectors:
            proj = pr.project([img], keep_views=out is not None)[0]
            results.append({"path": str(path), **proj.summary()})
            if out is not None:
                save_projection(proj, pr.space, out, f"{path.stem}.{proj.space}", figure=figures,
                                title=f"{path.name} [{proj.space}]")
    return results, failures
