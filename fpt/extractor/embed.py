"""Inference-time embedding: images -> n x n sliding windows -> extractor -> averaged embedding.

Policy (paper 001 Table VII, with the authors' crash fixed):

- Each image is cut into an ``n x n`` grid of ``crop_size`` windows (``n`` and ``crop_size`` come
  from the extractor checkpoint's preprocessing record, default 3 x 3 of the training crop), the
  windows spread evenly from edge to edge (:func:`fpt.images.window_offsets`), so any size works,
  including ``crop_size + 1``.
- The window embeddings (each L2-normalised) are averaged and re-normalised, then passed through
  the checkpoint's fingerprint whitening when it has one (:mod:`fpt.extractor.whitening`): one
  unit vector per image.
- Images smaller than a window on either side are mirror-padded (:func:`fpt.images.pad_to_min_size`)
  and flagged ``low_confidence``: padding repeats the image's own content and spectrum, so their
  fingerprints are less reliable. Every output carries the flag.

Memory is bounded: images stream from disk and windows are batched ``batch_size`` crops at a time,
so a folder of any size costs at most one batch of crops plus one decoded image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from fpt.images import LoadFailure, iter_images, sliding_windows


class ExtractorLike(Protocol):
    """What embedding needs from :class:`fpt.extractor.checkpoint.Extractor`."""

    sha256: str
    embedding_dim: int

    @property
    def preprocessing(self): ...  # has .crop_size and .windows

    def embed_crops(self, crops: torch.Tensor) -> torch.Tensor: ...

    # optional: ``whitening`` (fpt.extractor.whitening.Whitening or None), applied per image


@dataclass
class ImageEmbedding:
    path: Path | None
    embedding: np.ndarray  # (D,) float32, unit norm
    low_confidence: bool
    height: int
    width: int


def embedding_record(r: ImageEmbedding) -> dict:
    """The JSON record of one embedded image (``fpt embed --jsonl`` lines; the .npz's fields)."""
    return {"path": None if r.path is None else str(r.path), "embedding": [float(x) for x in r.embedding],
            "low_confidence": bool(r.low_confidence), "height": int(r.height), "width": int(r.width)}


@dataclass
class EmbedFailure:
    path: Path
    reason: str


def window_grid(ex: ExtractorLike, windows: int | None = None) -> tuple[int, int]:
    """``(crop_size, n)`` for ``ex``: n x n windows of the checkpoint's crop size."""
    pre = ex.preprocessing
    size = int(pre.crop_size)
    n = int(windows if windows is not None else getattr(pre, "windows", 3) or 3)
    if n < 1:
        raise ValueError("windows must be >= 1")
    return size, n


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


@dataclass
class _Pending:
    item: object  # path or index
    n_crops: int
    low_conf: bool
    hw: tuple[int, int]


@dataclass
class WindowBatcher:
    """Accumulates windows of several images, runs the extractor once per ``batch_size`` crops.

    Images whose windows straddle a batch boundary are assembled across batches, so each image is
    embedded from exactly its own n*n windows whatever the batch size.
    """

    ex: ExtractorLike
    size: int
    n: int
    batch_size: int = 64
    whiten: bool = True
    _crops: list[torch.Tensor] = field(default_factory=list)
    _n_buffered: int = 0
    _pending: list[_Pending] = field(default_factory=list)
    _outputs: list[np.ndarray] = field(default_factory=list)

    def add(self, item: object, img: torch.Tensor) -> list[tuple[object, np.ndarray, bool, tuple[int, int]]]:
        crops, low = sliding_windows(img, self.size, self.n)
        return self.add_windows(item, crops, low, (int(img.shape[-2]), int(img.shape[-1])))

    def add_windows(self, item: object, crops: torch.Tensor, low: bool,
                    hw: tuple[int, int]) -> list[tuple[object, np.ndarray, bool, tuple[int, int]]]:
        """Like :meth:`add` for windows already cut (e.g. by a decoding worker process)."""
        self._crops.append(crops)
        self._n_buffered += crops.shape[0]
        self._pending.append(_Pending(item, crops.shape[0], low, hw))
        done: list = []
        while self._n_buffered >= self.batch_size:
            done += self._run(self.batch_size)
        return done

    def flush(self) -> list[tuple[object, np.ndarray, bool, tuple[int, int]]]:
        done: list = []
        while self._n_buffered > 0:
            done += self._run(min(self.batch_size, self._n_buffered))
        return done

    def _run(self, k: int) -> list:
        allc = torch.cat(self._crops) if len(self._crops) > 1 else self._crops[0]
        batch, rest = allc[:k], allc[k:]
        self._crops = [rest] if rest.shape[0] else []
        self._n_buffered = rest.shape[0]
        with torch.inference_mode():
            out = self.ex.embed_crops(batch.contiguous())
        self._outputs.append(out.detach().float().cpu().numpy())
        # emit every pending image whose crops are all computed
        done = []
        have = sum(o.shape[0] for o in self._outputs)
        while self._pending and self._pending[0].n_crops <= have:
            p = self._pending.pop(0)
            allo = np.concatenate(self._outputs) if len(self._outputs) > 1 else self._outputs[0]
            mine, left = allo[: p.n_crops], allo[p.n_crops:]
            self._outputs = [left] if left.shape[0] else []
            have -= p.n_crops
            done.append((p.item, self._finish(_normalise(_normalise(mine).mean(axis=0))), p.low_conf, p.hw))
        return done

    def _finish(self, emb: np.ndarray) -> np.ndarray:
        wh = getattr(self.ex, "whitening", None) if self.whiten else None
        return wh.apply(emb) if wh is not None else emb


def embed_tensors(ex: ExtractorLike, images: Sequence[torch.Tensor], *, windows: int | None = None,
                  batch_size: int = 64, whiten: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Embed in-memory images (each (3, H, W) in [0, 1]) -> ``(emb (n, D) float32, low_conf (n,) bool)``.

    ``whiten=False`` skips the checkpoint's whitening (used to fit it).
    """
    size, n = window_grid(ex, windows)
    b = WindowBatcher(ex, size, n, batch_size, whiten)
    got: dict[int, tuple[np.ndarray, bool]] = {}
    for i, img in enumerate(images):
        for item, e, low, _ in b.add(i, img):
            got[item] = (e, low)
    for item, e, low, _ in b.flush():
        got[item] = (e, low)
    if not images:
        return np.zeros((0, int(ex.embedding_dim)), np.float32), np.zeros(0, bool)
    emb = np.stack([got[i][0] for i in range(len(images))])
    low = np.array([got[i][1] for i in range(len(images))], dtype=bool)
    return emb, low


def iter_embeddings(ex: ExtractorLike, paths: Iterable[Path], *, windows: int | None = None,
                    batch_size: int = 64, on_done: Callable[[Path], None] | None = None,
                    loaded: Iterable[tuple[Path, torch.Tensor | LoadFailure]] | None = None,
                    ) -> Iterator[ImageEmbedding | EmbedFailure]:
    """Stream files -> :class:`ImageEmbedding` (or :class:`EmbedFailure` for unreadable files).

    Results come in input order. ``on_done(path)`` is called once per file (for progress bars).
    """
    size, n = window_grid(ex, windows)
    b = WindowBatcher(ex, size, n, batch_size)
    queue: list[Path] = []
    ready: dict[Path, ImageEmbedding | EmbedFailure] = {}

    def drain() -> Iterator[ImageEmbedding | EmbedFailure]:
        while queue and queue[0] in ready:
            p = queue.pop(0)
            r = ready.pop(p)
            if on_done is not None:
                on_done(p)
            yield r

    source = loaded if loaded is not None else iter_images(paths)
    for path, img in source:
        queue.append(path)
        if isinstance(img, LoadFailure):
            ready[path] = EmbedFailure(path, img.reason)
        else:
            for item, e, low, hw in b.add(path, img):
                ready[item] = ImageEmbedding(item, e, low, *hw)
        yield from drain()
    for item, e, low, hw in b.flush():
        ready[item] = ImageEmbedding(item, e, low, *hw)
    yield from drain()


def save_embeddings_npz(out: str | Path, results: Sequence[ImageEmbedding], ex: ExtractorLike) -> Path:
    """Write ``embeddings`` (n, D), ``paths``, ``low_confidence``, ``sizes`` and the extractor hash.

    Plain arrays only (no pickled objects), so ``np.load(..., allow_pickle=False)`` reads it.
    """
    from fpt.storage import atomic_path

    out = Path(out)
    dim = int(ex.embedding_dim)
    emb = np.stack([r.embedding for r in results]) if results else np.zeros((0, dim), np.float32)
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                embeddings=emb.astype(np.float32),
                paths=np.array([str(r.path) for r in results], dtype=np.str_),
                low_confidence=np.array([r.low_confidence for r in results], dtype=bool),
                sizes=np.array([[r.height, r.width] for r in results], dtype=np.int64).reshape(-1, 2),
                extractor_sha256=np.array(ex.sha256),
                crop_size=np.array(window_grid(ex)[0]),
            )
    return out
