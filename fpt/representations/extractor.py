"""``fpt``: the learned fingerprint extractor as a representation (n x n sliding windows,
:mod:`fpt.extractor.embed`)."""

from __future__ import annotations

import numpy as np
import torch


class FptRepresentation:
    """The learned fingerprint extractor, exactly as ``fpt identify`` uses it."""

    name = "fpt"

    def __init__(self, extractor=None, device: str = "auto", windows: int | None = None,
                 batch_size: int = 64, **_: object) -> None:
        if extractor is None or isinstance(extractor, (str, bytes)) or hasattr(extractor, "__fspath__"):
            from fpt.extractor.checkpoint import load_extractor

            extractor = load_extractor(extractor, device=device)
        self.ex = extractor
        self.windows = windows
        self.batch_size = batch_size

    def embed_images(self, images: list[torch.Tensor]) -> np.ndarray:
        from fpt.extractor.embed import embed_tensors

        emb, _ = embed_tensors(self.ex, images, windows=self.windows, batch_size=self.batch_size)
        return emb
