"""The reference manifold on disk (HDF5) and exact nearest-neighbour search over it.

File layout (kind ``manifold``, schema 1, written through :mod:`fpt.storage`)::

    /                      attrs: fpt_kind, fpt_schema, created, fpt_version, sources (JSON)
    /spaces/<space>/       attrs: spec (SpaceSpec JSON), dim, shape (JSON), count
        features  (N, D) float32   one row per reference image, chunked ~1 MiB, streamed
        pixels    (N, 3, S, S) uint8   the fixed-size view (freq/feat only; rgb rows are pixels)
        calib_nn  (m,) float64     leave-one-out nearest-neighbour distances of a sample of
                                   references: the scale against which a query's distance is read
    /paths         (N,) str      source file of each row (as given at build time)

One file may hold several spaces built from the same images (``--space rgb,freq``). Building
streams images batch by batch into resizable datasets of a temporary file that replaces the
target only when complete, so memory stays bounded and Ctrl-C leaves nothing half-written.

Search: squared L2 distances ``|q|^2 - 2 q.r + |r|^2`` by batched matrix products over reference
chunks (torch, CPU or CUDA), keeping a few candidates per query; the candidates are then re-ranked
with exact float64 differences, so float32 cancellation can never pick the wrong neighbour among
near-ties. Ties are broken towards the lower row index.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fpt.errors import ConfigError, StoreError
from fpt.manifold.spaces import SpaceSpec
from fpt.storage import open_store

KIND = "manifold"
SCHEMA = 1
#: Target bytes per HDF5 chunk of ``features``.
_CHUNK_BYTES = 1 << 20
#: References held in (device) memory at once during search when the manifold is streamed.
DEFAULT_CHUNK_ROWS = 4096
#: Manifolds up to this many bytes of features are loaded once and kept in memory.
DEFAULT_MEMORY_BUDGET = 2 << 30
#: Candidates kept per query before exact re-ranking.
_CANDIDATES = 4
#: References sampled at build time for the leave-one-out distance calibration.
_CALIB_SAMPLE = 256


# ----------------------------------------------------------------------------------- search


@dataclass
class Neighbours:
    """Nearest references of a batch of queries."""

    index: np.ndarray  # (Q,) int64 row in the manifold
    sq_distance: np.ndarray  # (Q,) float64 exact squared L2 distance

    @property
    def distance(self) -> np.ndarray:
        return np.sqrt(self.sq_distance)


def _candidate_search(
    queries: torch.Tensor,
    chunks: Iterator[tuple[int, torch.Tensor, torch.Tensor | None]],
    device: torch.device,
    candidates: int,
    exclude: np.ndarray | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query, the ``candidates`` lowest approximate squared distances over all chunks."""
    q = queries.to(device, torch.float32)
    q_sq = (q * q).sum(dim=1, keepdim=True)
    nq = q.shape[0]
    best_d = torch.full((nq, 0), float("inf"), device=device)
    best_i = torch.zeros((nq, 0), dtype=torch.long, device=device)
    excl = None if exclude is None else torch.as_tensor(exclude, dtype=torch.long, device=device)
    rows_q = torch.arange(nq, device=device)
    for start, ref, ref_sq in chunks:
        r = ref.to(device, torch.float32)
        r_sq = (r * r).sum(dim=1) if ref_sq is None else ref_sq.to(device)
        d = torch.addmm(q_sq + r_sq[None, :], q, r.T, beta=1.0, alpha=-2.0)
        if excl is not None:
            local = excl - start
            hit = (local >= 0) & (local < r.shape[0])
            d[rows_q[hit], local[hit]] = float("inf")
        k = min(candidates, r.shape[0])
        vals, idx = torch.topk(d, k, dim=1, largest=False)
        best_d = torch.cat([best_d, vals], dim=1)
        best_i = torch.cat([best_i, idx + start], dim=1)
        if best_d.shape[1] > candidates:
            best_d, sel = torch.topk(best_d, candidates, dim=1, largest=False)
            best_i = torch.gather(best_i, 1, sel)
    return best_i, best_d


def _rerank(queries: np.ndarray, cand: np.ndarray, cand_d: np.ndarray, fetch: Callable[[np.ndarray], np.ndarray]) -> Neighbours:
    """Exact float64 re-ranking of candidate rows; ties go to the lowest index.

    Vectorised over blocks of queries (elementwise NumPy, no BLAS: tiny dot products through a
    threaded BLAS cost milliseconds each on a busy machine).
    """
    valid = np.isfinite(cand_d)
    nq, nc = cand.shape
    best_i = np.full(nq, -1, dtype=np.int64)
    best_d = np.full(nq, np.inf)
    flat = np.unique(cand[valid])
    if flat.size == 0:
        return Neighbours(best_i, best_d)
    rows = fetch(flat)
    # position of each candidate in ``rows`` (invalid candidates point at row 0 and are masked)
    pos = np.searchsorted(flat, np.where(valid, cand, flat[0]))
    block = max(1, (1 << 24) // max(1, nc * rows.shape[1]))  # ~128 MiB of float64 per block
    for s in range(0, nq, block):
        e = min(nq, s + block)
        diff = rows[pos[s:e]].astype(np.float64) - queries[s:e, None, :].astype(np.float64)
        d = np.einsum("qcd,qcd->qc", diff, diff)
        d[~valid[s:e]] = np.inf
        # lexicographic (distance, index): the lowest index wins exact ties
        order = np.lexsort((np.where(valid[s:e], cand[s:e], np.iinfo(np.int64).max), d), axis=-1)
        first = order[:, 0]
        rr = np.arange(e - s)
        best_d[s:e] = d[rr, first]
        best_i[s:e] = np.where(np.isfinite(best_d[s:e]), cand[s:e][rr, first], -1)
    return Neighbours(best_i, best_d)


def nearest_in_array(
    queries: np.ndarray | torch.Tensor,
    references: np.ndarray | torch.Tensor,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    device: torch.device | str = "cpu",
    exclude: np.ndarray | None = None,
) -> Neighbours:
    """Exact L2 nearest reference row for each query row (both (n, D)); see the module notes.

    ``exclude[i]`` (optional) is a row that query i may not match (leave-one-out).
    """
    ref_t = torch.as_tensor(references)
    q_np = np.asarray(queries.cpu() if isinstance(queries, torch.Tensor) else queries, dtype=np.float32)
    if ref_t.shape[0] == 0:
        raise ValueError("empty reference set")
    if q_np.ndim != 2 or q_np.shape[1] != ref_t.shape[1]:
        raise ValueError(f"queries {q_np.shape} do not match references {tuple(ref_t.shape)}")
    device = torch.device(device)
    chunks = ((s, ref_t[s : s + chunk_rows], None) for s in range(0, ref_t.shape[0], chunk_rows))
    cand, cand_d = _candidate_search(torch.from_numpy(q_np), chunks, device, _CANDIDATES, exclude)
    ref_np = ref_t.cpu().numpy()
    return _rerank(q_np, cand.cpu().numpy(), cand_d.cpu().numpy(), lambda idx: ref_np[idx])


# ----------------------------------------------------------------------------------- reading


class ManifoldSpace:
    """One space of an open manifold file: features, optional pixels, search."""

    def __init__(self, manifold: "Manifold", name: str):
        self.manifold = manifold
        self.name = name
        g = manifold.file["spaces"][name]
        self.group = g
        self.spec = SpaceSpec.from_json(g.attrs["spec"])
        self.shape = tuple(json.loads(g.attrs["shape"]))
        self.dim = int(g.attrs["dim"])
        self.count = int(g["features"].shape[0])
        self.calib_nn = np.asarray(g["calib_nn"][()], dtype=np.float64) if "calib_nn" in g else np.zeros(0)
        self._cache: torch.Tensor | None = None
        self._cache_sq: torch.Tensor | None = None

    # -- rows
    def rows(self, idx: np.ndarray | Sequence[int]) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        if self._cache is not None:
            return self._cache[torch.from_numpy(idx)].cpu().numpy()
        order = np.argsort(idx)
        uniq, inv = np.unique(idx[order], return_inverse=True)
        got = self.group["features"][uniq] if uniq.size else np.zeros((0, self.dim), np.float32)
        out = np.empty((idx.size, self.dim), dtype=np.float32)
        out[order] = got[inv]
        return out

    def pixels(self, i: int) -> torch.Tensor | None:
        """The stored fixed-size view of reference ``i`` as (3, S, S) float in [0, 1], if kept."""
        if self.spec.space == "rgb":
            return torch.from_numpy(self.rows([i])[0].reshape(self.shape)).clamp(0, 1)
        if "pixels" not in self.group:
            return None
        return torch.from_numpy(self.group["pixels"][i].astype(np.float32) / 255.0)

    def _chunks(self, chunk_rows: int, device: torch.device) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]:
        if self._cache is not None:
            for s in range(0, self.count, chunk_rows):
                yield s, self._cache[s : s + chunk_rows], self._cache_sq[s : s + chunk_rows]
            return
        ds = self.group["features"]
        for s in range(0, self.count, chunk_rows):
            yield s, torch.from_numpy(ds[s : s + chunk_rows]), None

    def load(self, device: torch.device | str = "cpu") -> None:
        """Keep all features in (device) memory for repeated searches."""
        if self._cache is None:
            self._cache = torch.from_numpy(self.group["features"][()]).to(device)
            self._cache_sq = (self._cache * self._cache).sum(dim=1)

    # -- search
    def nearest(
        self,
        queries: np.ndarray | torch.Tensor,
        *,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        exclude: np.ndarray | None = None,
    ) -> Neighbours:
        q = torch.as_tensor(queries).float()
        if q.dim() != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries of shape {tuple(q.shape)} do not fit a {self.dim}-d manifold")
        if self.count == 0:
            raise StoreError("the manifold has no reference images", path=self.manifold.path)
        device = self.manifold.device
        if self._cache is None and self.count * self.dim * 4 <= self.manifold.memory_budget:
            self.load(device)
        cand, cand_d = _candidate_search(q, self._chunks(chunk_rows, device), device, _CANDIDATES, exclude)
        return _rerank(q.cpu().numpy(), cand.cpu().numpy(), cand_d.cpu().numpy(), self.rows)

    def percentile(self, distance: float) -> float | None:
        """Share (0-100) of real references whose own nearest-neighbour distance is below ``distance``."""
        if self.calib_nn.size == 0:
            return None
        return float(100.0 * np.searchsorted(self.calib_nn, distance, side="right") / self.calib_nn.size)


class Manifold:
    """An open manifold file (read-only). Use as a context manager."""

    def __init__(self, path: str | Path, *, device: torch.device | str = "cpu",
                 memory_budget: int = DEFAULT_MEMORY_BUDGET):
        self.path = Path(path)
        self.device = torch.device(device)
        self.memory_budget = int(memory_budget)
        self.file = open_store(self.path, KIND, SCHEMA, "r")
        try:
            if "spaces" not in self.file or "paths" not in self.file or not len(self.file["spaces"]):
                raise StoreError("manifold file has no spaces (incomplete or damaged)", path=self.path,
                                 hint="rebuild it with fpt manifold build")
            raw = self.file["paths"][()]
            self.paths = [p.decode() if isinstance(p, bytes) else str(p) for p in raw]
            self.sources = json.loads(self.file.attrs.get("sources", "[]"))
            self.created = str(self.file.attrs.get("created", ""))
            self._spaces = {name: ManifoldSpace(self, name) for name in self.file["spaces"]}
        except (KeyError, ValueError, OSError) as exc:
            self.file.close()
            raise StoreError(f"manifold file is damaged ({exc})", path=self.path,
                             hint="rebuild it with fpt manifold build") from exc
        except BaseException:
            self.file.close()
            raise

    @property
    def spaces(self) -> list[str]:
        return list(self._spaces)

    @property
    def count(self) -> int:
        return len(self.paths)

    def space(self, name: str | None = None) -> ManifoldSpace:
        if name is None:
            if len(self._spaces) > 1:
                raise ConfigError(f"this manifold holds several spaces ({', '.join(self._spaces)})",
                                  hint="choose one with --space")
            name = next(iter(self._spaces))
        if name not in self._spaces:
            raise ConfigError(f"the manifold has no {name!r} space (it has {', '.join(self._spaces)})",
                              hint=f"rebuild with fpt manifold build --space {name}")
        return self._spaces[name]

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "Manifold":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
