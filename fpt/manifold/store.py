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
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
import torch

from fpt.errors import ConfigError, StoreError
from fpt.images import LoadFailure, find_images, iter_images
from fpt.manifold.spaces import SpaceEmbedder, SpaceSpec, fixed_view
from fpt.storage import atomic_path, init_store, open_store, store_lock

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


# ----------------------------------------------------------------------------------- building


@dataclass
class BuildReport:
    path: Path
    count: int
    spaces: dict  # name -> {"dim", "spec", "calib_nn_median"}
    failed: list = field(default_factory=list)  # [(path, reason)]
    padded: int = 0
    seconds: float = 0.0


def _chunk_rows_for(dim: int) -> int:
    return max(1, min(1024, _CHUNK_BYTES // (4 * dim)))


def build_manifold(
    inputs: str | Path | Sequence[str | Path],
    out: str | Path,
    specs: Sequence[SpaceSpec],
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    keep_pixels: bool = True,
    recursive: bool = True,
    limit: int | None = None,
    seed: int = 0,
    on_progress: Callable[[int, int], None] | None = None,
) -> BuildReport:
    """Embed every image under ``inputs`` into each space of ``specs`` and write ``out`` atomically.

    Unreadable images are skipped and listed in the report. ``limit`` keeps a seeded random
    subset of that many files. Memory: one batch of images plus one HDF5 chunk per dataset.
    """
    t0 = time.perf_counter()
    if not specs:
        raise ConfigError("no manifold space requested")
    names = [s.space for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError("each space may be requested only once")
    files = find_images(inputs, recursive=recursive)
    if limit is not None and limit < len(files):
        files = sorted(random.Random(seed).sample(files, limit))
    device = torch.device(device)
    embedders = [SpaceEmbedder(s, device) for s in specs]
    out = Path(out)
    report = BuildReport(out, 0, {})
    src = [str(Path(p)) for p in ([inputs] if isinstance(inputs, (str, Path)) else inputs)]
    with store_lock(out), atomic_path(out) as tmp:
        with h5py.File(tmp, "w") as f:
            init_store(f, KIND, SCHEMA)
            f.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            f.attrs["sources"] = json.dumps(src)
            try:
                from importlib.metadata import version

                f.attrs["fpt_version"] = version("fpt")
            except Exception:  # pragma: no cover - not installed as a distribution
                f.attrs["fpt_version"] = "unknown"
            sp = f.create_group("spaces")
            feats, pix = [], []
            for spec, emb in zip(specs, embedders):
                g = sp.create_group(spec.space)
                g.attrs["spec"] = spec.to_json()
                g.attrs["dim"] = emb.dim
                g.attrs["shape"] = json.dumps(list(emb.shape))
                feats.append(g.create_dataset("features", shape=(0, emb.dim), maxshape=(None, emb.dim),
                                              dtype="float32", chunks=(_chunk_rows_for(emb.dim), emb.dim)))
                if keep_pixels and spec.space != "rgb":
                    s = spec.size
                    pix.append(g.create_dataset("pixels", shape=(0, 3, s, s), maxshape=(None, 3, s, s),
                                                dtype="uint8", chunks=(max(1, _CHUNK_BYTES // (3 * s * s)), 3, s, s)))
                else:
                    pix.append(None)
            paths_ds = f.create_dataset("paths", shape=(0,), maxshape=(None,), dtype=h5py.string_dtype(),
                                        chunks=(1024,))

            def flush(batch_paths: list[Path], batch_imgs: list[torch.Tensor]) -> None:
                n0 = paths_ds.shape[0]
                n1 = n0 + len(batch_paths)
                for spec, emb, ds, pds in zip(specs, embedders, feats, pix):
                    views = []
                    for img in batch_imgs:
                        v, padded = fixed_view(img, spec.size, spec.fit)
                        views.append(v)
                        if padded and spec is specs[0]:
                            report.padded += 1
                    views_t = torch.stack(views)
                    rows = emb(views_t).cpu().numpy().astype(np.float32)
                    ds.resize((n1, ds.shape[1]))
                    ds[n0:n1] = rows
                    if pds is not None:
                        pds.resize((n1, *pds.shape[1:]))
                        pds[n0:n1] = np.round(views_t.clamp(0, 1).numpy() * 255.0).astype(np.uint8)
                paths_ds.resize((n1,))
                paths_ds[n0:n1] = [str(p) for p in batch_paths]

            batch_p: list[Path] = []
            batch_i: list[torch.Tensor] = []
            done = 0
            for p, img in iter_images(files):
                done += 1
                if isinstance(img, LoadFailure):
                    report.failed.append((str(p), img.reason))
                else:
                    batch_p.append(p)
                    batch_i.append(img)
                if len(batch_p) >= batch_size:
                    flush(batch_p, batch_i)
                    batch_p, batch_i = [], []
                if on_progress is not None:
                    on_progress(done, len(files))
            if batch_p:
                flush(batch_p, batch_i)
            report.count = int(paths_ds.shape[0])
            if report.count == 0:
                raise StoreError("none of the images could be read; no manifold written", path=out)
            # Leave-one-out calibration: how far real images lie from the rest of the manifold.
            rng = np.random.default_rng(seed)
            for spec, emb, ds in zip(specs, embedders, feats):
                g = sp[spec.space]
                if report.count >= 2:
                    m = min(_CALIB_SAMPLE, report.count)
                    sample = np.sort(rng.choice(report.count, size=m, replace=False))
                    q = ds[sample]
                    chunks = ((s, torch.from_numpy(ds[s : s + DEFAULT_CHUNK_ROWS]), None)
                              for s in range(0, report.count, DEFAULT_CHUNK_ROWS))
                    cand, cand_d = _candidate_search(torch.from_numpy(q), chunks, device, _CANDIDATES, sample)
                    nb = _rerank(q, cand.cpu().numpy(), cand_d.cpu().numpy(), lambda idx: ds[np.sort(idx)])
                    calib = np.sort(nb.distance)
                else:
                    calib = np.zeros(0)
                g.create_dataset("calib_nn", data=calib.astype(np.float64))
                report.spaces[spec.space] = {
                    "dim": emb.dim,
                    "spec": json.loads(spec.to_json()),
                    "calib_nn_median": float(np.median(calib)) if calib.size else None,
                }
    report.seconds = time.perf_counter() - t0
    return report


def write_manifold(out: str | Path, spaces: dict[str, tuple[SpaceSpec, np.ndarray]], paths: Sequence[str],
                   *, sources: Sequence[str] = (), seed: int = 0) -> Path:
    """Write a manifold from precomputed rows: ``{space: (spec, features (N, D))}`` (atomic).

    For features computed elsewhere (and for benchmarks); rows must follow the space's spec.
    """
    out = Path(out)
    n = len(paths)
    with store_lock(out), atomic_path(out) as tmp:
        with h5py.File(tmp, "w") as f:
            init_store(f, KIND, SCHEMA)
            f.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            f.attrs["sources"] = json.dumps(list(sources))
            sp = f.create_group("spaces")
            for name, (spec, feats) in spaces.items():
                feats = np.asarray(feats, dtype=np.float32)
                if feats.ndim != 2 or feats.shape[0] != n:
                    raise ConfigError(f"{name}: {feats.shape} rows for {n} paths")
                if spec.space != name:
                    raise ConfigError(f"space {name!r} given a {spec.space!r} spec")
                g = sp.create_group(name)
                g.attrs["spec"] = spec.to_json()
                g.attrs["dim"] = feats.shape[1]
                shape = [3, spec.size, spec.size] if name != "feat" else [feats.shape[1]]
                g.attrs["shape"] = json.dumps(shape)
                g.create_dataset("features", data=feats, maxshape=(None, feats.shape[1]),
                                 chunks=(_chunk_rows_for(feats.shape[1]), feats.shape[1]))
                m = min(_CALIB_SAMPLE, n)
                calib = np.zeros(0)
                if n >= 2:
                    sample = np.sort(np.random.default_rng(seed).choice(n, size=m, replace=False))
                    nb = nearest_in_array(feats[sample], feats, exclude=sample)
                    calib = np.sort(nb.distance)
                g.create_dataset("calib_nn", data=calib)
            f.create_dataset("paths", data=[str(p) for p in paths], dtype=h5py.string_dtype(),
                             maxshape=(None,), chunks=(1024,) if n else None)
    return out
