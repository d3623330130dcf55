"""Image representations compared by ``fpt eval`` and ``fpt analyse``, behind one registry.

A representation turns images ((3, H, W) float32 in [0, 1]) into one vector per image; every
evaluation protocol then works on cosine similarities of those vectors (means of unit vectors for
sets of images), so all methods are scored the same way on the same splits.

- :mod:`fpt.representations.extractor` — ``fpt``, the learned fingerprint extractor.
- :mod:`fpt.representations.baselines` — ``prnu`` and ``spectrum``, training-free baselines.
- :mod:`fpt.representations.artifact` — ManiFPT's artifact representations (``artifact-*``).

Factories in :data:`REPRESENTATIONS` are called with keyword arguments (``extractor=``,
``device=``, ``seed=``, ``real_images=``...) and must ignore those they do not use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from fpt.errors import ConfigError
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
}


def _register_plugins() -> None:
    """Let optional modules add their representations (ManiFPT artifacts)."""
    try:
        from fpt.representations import artifact  # may register into REPRESENTATIONS
    except Exception:  # a broken optional module must not take the baselines down
        return
    hook = getattr(artifact, "register_representations", None)
    if callable(hook):
        try:
            hook(REPRESENTATIONS)
        except Exception:
            return


def build_representation(name: str, **kwargs) -> Representation:
    """Build a representation by registered name (``fpt``, ``prnu``, ``spectrum``, plugins)."""
    if name not in REPRESENTATIONS:
        _register_plugins()
    try:
        factory = REPRESENTATIONS[name]
    except KeyError:
        raise ConfigError(f"unknown method '{name}'", hint=f"choose from {', '.join(sorted(REPRESENTATIONS))}") from None
    return factory(**kwargs)


def available_methods() -> list[str]:
    _register_plugins()
    return sorted(REPRESENTATIONS)
