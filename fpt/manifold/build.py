"""Writing manifold files: streaming build from image folders, or from precomputed rows.

See :mod:`fpt.manifold.store` for the file layout and the search.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
import torch

from fpt.errors import ConfigError, StoreError
from fpt.images import LoadFailure, find_images, iter_images
from fpt.manifold.spaces import SpaceEmbedder, SpaceSpec, fixed_view
from fpt.manifold.store import (
    _CALIB_SAMPLE,
    _CANDIDATES,
    _CHUNK_BYTES,
    DEFAULT_CHUNK_ROWS,
    KIND,
    SCHEMA,
    _candidate_search,
    _rerank,
    nearest_in_array,
)
from fpt.storage import atomic_path, init_store, store_lock


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

            # Only the fixed-size views of a batch are held (never the full-size decoded images),
            # so memory is batch x spaces x 3 x S x S floats whatever the photos' resolution.
            def flush(batch_paths: list[Path], batch_views: list[list[torch.Tensor]]) -> None:
                n0 = paths_ds.shape[0]
                n1 = n0 + len(batch_paths)
                for views, emb, ds, pds in zip(batch_views, embedders, feats, pix):
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
            batch_v: list[list[torch.Tensor]] = [[] for _ in specs]
            done = 0
            for p, img in iter_images(files):
                done += 1
                if isinstance(img, LoadFailure):
                    report.failed.append((str(p), img.reason))
                else:
                    batch_p.append(p)
                    for k, spec in enumerate(specs):
                        v, padded = fixed_view(img, spec.size, spec.fit)
                        batch_v[k].append(v)
                        if padded and k == 0:
                            report.padded += 1
                    del img
                if len(batch_p) >= batch_size:
                    flush(batch_p, batch_v)
                    batch_p, batch_v = [], [[] for _ in specs]
                if on_progress is not None:
                    on_progress(done, len(files))
            if batch_p:
                flush(batch_p, batch_v)
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
