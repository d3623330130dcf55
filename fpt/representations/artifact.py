"""ManiFPT spaces (paper 002, :mod:`fpt.manifold`) as representations for ``fpt eval`` and
``fpt analyse``: artifacts a(x) = x - x* (``artifact-rgb``, ``artifact-freq``, ``artifact-feat``,
``artifact-rgb-fpt``: rgb artifacts through fpt's extractor) and the raw ``rgb`` / ``freq`` views
that artifacts are measured in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fpt.errors import ConfigError
from fpt.manifold.artifact import Projector
from fpt.manifold.spaces import SpaceEmbedder, SpaceSpec, fixed_view
from fpt.manifold.store import Manifold
from fpt.representations.extractor import FptRepresentation


class ArtifactRepresentation:
    """Artifacts as a representation for ``fpt eval`` (H4's registry protocol).

    ``embed_images(images)`` maps (3, H, W) [0, 1] tensors to rows ``a(x) = x - x*`` (flattened),
    float32 (n, D). Construct with a manifold file (or an open :class:`Manifold`) and a space
    held by it.
    """

    def __init__(self, manifold: str | Path | Manifold, space: str = "rgb", device: str = "auto"):
        if not isinstance(manifold, Manifold):
            from fpt.devices import select_device

            manifold = Manifold(manifold, device=select_device(device))
        self.manifold = manifold
        self.projector = Projector(manifold, space)
        self.space = space
        self.name = f"artifact-{space}"

    def embed_images(self, images: list[torch.Tensor]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.projector.space.dim), dtype=np.float32)
        rows = [p.artifact.reshape(-1) for p in self.projector.project(images)]
        return np.stack(rows).astype(np.float32)

    def close(self) -> None:
        self.manifold.close()


class ArtifactExtractorRepresentation:
    """RGB artifacts fed to fpt's fingerprint extractor: ``embed((a(x) + 1) / 2)``.

    The rgb artifact lies in [-1, 1]; the affine map to [0, 1] only halves it and adds a constant,
    which the extractor's high-pass residual removes, so the extractor sees the residual of
    x - x* — the query's fingerprint with the nearest real image's own noise subtracted.
    """

    def __init__(self, manifold: str | Path | Manifold, extractor=None, device: str = "auto",
                 windows: int | None = None):
        self.artifacts = ArtifactRepresentation(manifold, "rgb", device=device)
        self.fpt = FptRepresentation(extractor=extractor, device=device, windows=windows)
        self.name = "artifact-rgb-fpt"

    def embed_images(self, images: list[torch.Tensor]) -> np.ndarray:
        if not images:
            return self.fpt.embed_images([])
        shape = self.artifacts.projector.space.shape
        arts = self.artifacts.embed_images(images)
        views = [torch.from_numpy((a.reshape(shape) + 1.0) / 2.0) for a in arts]
        return self.fpt.embed_images(views)


class SpaceRepresentation:
    """The raw view of one space (``rgb`` or ``freq``), no projection: the baseline that shows
    what subtracting the nearest real image (the artifact) adds. With a manifold holding the
    space, its exact view (size, fit) is used."""

    def __init__(self, space: str, manifold: str | Path | None = None, device: str = "auto", **_: object):
        from fpt.devices import select_device

        spec = SpaceSpec(space)
        if manifold is not None:
            with Manifold(manifold) as m:
                if space in m.spaces:
                    spec = m.space(space).spec
        self.spec = spec
        self.embedder = SpaceEmbedder(spec, select_device(device))
        self.name = f"{space} (raw, {spec.size}px {spec.fit})"

    def embed_images(self, images: list[torch.Tensor]) -> np.ndarray:
        views = torch.stack([fixed_view(i, self.spec.size, self.spec.fit)[0] for i in images])
        return self.embedder(views).cpu().numpy()


def artifact_representations(manifold: str | Path, device: str = "auto") -> dict[str, ArtifactRepresentation]:
    """One representation per space held by ``manifold``: ``{"artifact-rgb": ..., ...}``."""
    from fpt.devices import select_device

    m = Manifold(manifold, device=select_device(device))
    return {f"artifact-{s}": ArtifactRepresentation(m, s) for s in m.spaces}


# ----------------------------------------------------------------------------------- registry factories

#: Temporary manifolds built from ``real_images=`` folders, per (folder, space), for this process.
_ADHOC: dict[tuple[str, str], Path] = {}


def _adhoc_manifold(real_images: str | Path, space: str, device: str) -> Path:
    """Build (once per process) a manifold of ``real_images`` in a temporary folder."""
    import atexit
    import shutil
    import tempfile

    from fpt.devices import select_device
    from fpt.manifold.spaces import resolve_spec
    from fpt.manifold.build import build_manifold

    key = (str(Path(real_images).resolve()), space)
    if key not in _ADHOC:
        tmp = Path(tempfile.mkdtemp(prefix="fpt-manifold-"))
        atexit.register(shutil.rmtree, tmp, True)
        dev = select_device(device)
        build_manifold(real_images, tmp / "manifold.h5", [resolve_spec(space, None, "crop", None, dev)], device=dev)
        _ADHOC[key] = tmp / "manifold.h5"
    return _ADHOC[key]


def _factory(space: str):
    def make(manifold: str | Path | Manifold | None = None, device: str = "auto",
             real_images: str | Path | None = None, **_: object) -> ArtifactRepresentation:
        return ArtifactRepresentation(_manifold_source(manifold, real_images, space, device), space, device=device)

    make.__doc__ = f"Artifacts a(x) = x - x* in the {space} space of a real-image manifold (paper 002)."
    return make


def _manifold_source(manifold, real_images, space: str, device: str):
    import os

    source = manifold or os.environ.get("FPT_MANIFOLD") or None
    if source is None and real_images is not None:
        source = _adhoc_manifold(real_images, space, device)
    if source is None:
        raise ConfigError(f"method artifact-{space} needs a manifold of real images",
                          hint="build one with `fpt manifold build REAL_DIR --space rgb,freq --out m.h5` "
                               "and pass --manifold m.h5 (or set FPT_MANIFOLD)")
    return source


def _make_artifact_fpt(manifold=None, extractor=None, device: str = "auto", real_images=None,
                       windows: int | None = None, **_: object) -> ArtifactExtractorRepresentation:
    return ArtifactExtractorRepresentation(_manifold_source(manifold, real_images, "rgb", device),
                                           extractor=extractor, device=device, windows=windows)


def _raw_factory(space: str):
    def make(manifold: str | Path | None = None, device: str = "auto", **_: object) -> SpaceRepresentation:
        return SpaceRepresentation(space, manifold=manifold, device=device)

    make.__doc__ = f"The raw {space} view of paper 002 (no projection onto a manifold)."
    return make


#: Factories for :data:`fpt.representations.REPRESENTATIONS`.
FACTORIES = {
    **{f"artifact-{space}": _factory(space) for space in ("rgb", "freq", "feat")},
    "artifact-rgb-fpt": _make_artifact_fpt,
    "rgb": _raw_factory("rgb"),
    "freq": _raw_factory("freq"),
}
