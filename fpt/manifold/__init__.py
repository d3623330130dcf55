"""ManiFPT (paper 002): reference manifolds of real images, projections and artifacts.

- :mod:`fpt.manifold.spaces` — the rgb / freq / feat embedding spaces and their preprocessing.
- :mod:`fpt.manifold.store`  — the HDF5 manifold file (reading) and exact chunked L2 search.
- :mod:`fpt.manifold.build`  — streaming build from image folders, or from precomputed rows.
- :mod:`fpt.manifold.artifact` — projection x -> x*, artifact a(x) = x - x*, figures.

Artifacts as representations for ``fpt eval`` / ``fpt analyse`` live in
:mod:`fpt.representations.artifact`; separability of any representation (``fpt analyse``) in
:mod:`fpt.separability`.
"""

from fpt.manifold.artifact import Projection, Projector
from fpt.manifold.spaces import SPACES, SpaceEmbedder, SpaceSpec, fixed_view, log_magnitude
from fpt.manifold.build import BuildReport, build_manifold, write_manifold
from fpt.manifold.store import KIND, SCHEMA, Manifold, Neighbours, nearest_in_array

__all__ = [
    "KIND",
    "SCHEMA",
    "SPACES",
    "BuildReport",
    "Manifold",
    "Neighbours",
    "Projection",
    "Projector",
    "SpaceEmbedder",
    "SpaceSpec",
    "build_manifold",
    "fixed_view",
    "log_magnitude",
    "nearest_in_array",
    "write_manifold",
]
