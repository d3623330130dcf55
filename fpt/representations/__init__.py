"""Image representations compared by ``fpt eval`` and ``fpt analyse``, behind one registry.

A representation turns images ((3, H, W) float32 in [0, 1]) into one vector per image; every
evaluation protocol then works on cosine similarities of those vectors (means of unit vectors for
sets of images), so all methods are scored the same way on the same splits.

- :mod:`fpt.representations.extractor` — ``fpt``, the learned fingerprint extractor.
- :mod:`fpt.representations.baselines` — ``prnu`` and ``spectrum``, training-free baselines.
- :mod:`fpt.representations.artifact` — ManiFPT's artifact representations (``artifact-*``) and
  the raw ``rgb`` / ``freq`` views they are measured in.

The registry is static: every method is listed here, and a module that fails to import fails
loudly instead of silently dropping its methods.

Factories in :data:`REPRESENTATIONS` are called with keyword arguments (``extractor=``,
``device=``, ``seed=``, ``real_images=``...) and must ignore those they do not use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from fpt.errors import ConfigError
from fpt.representations.artifact import FACTORIES as _MANIFOLD_FACTORIES
from fpt.representations.baselines import BASELINE_CROP, PRNURepresentation, SpectrumRepresentation
from fpt.representations.extractor import FptRepresentation

__all__ = [
    "BASELINE_CROP",
    "REPRESENTATIONS",
    "FptRepresentation",
    "PRNURepresentation",
    "Representation",
    "SpectrumRepresentation",
    "available_methods",
    "build_representation",
]


class Representation(Protocol):
    name: str

    def embed_images(self, images: list[torch.Tensor]) -> np.ndarray:  # (n, d) float32
        ...


REPRESENTATIONS: dict[str, Callable[..., Representation]] = {
    "fpt": FptRepresentation,
    "prnu": PRNURepresentation,
    "spectrum": SpectrumRepresentation,
    **_MANIFOLD_FACTORIES,
}


def build_representation(name: str, **kwargs) -> Representation:
    """Build a representation by registered name (see :func:`available_methods`)."""
    try:
        factory = REPRESENTATIONS[name]
    except KeyError:
        raise ConfigError(f"unknown method '{name}'", hint=f"choose from {', '.join(available_methods())}") from None
    return factory(**kwargs)


def available_methods() -> list[str]:
    return sorted(REPRESENTATIONS)
