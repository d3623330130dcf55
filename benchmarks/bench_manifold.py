"""Projections per second against a 10 000-image manifold: fpt's chunked torch search vs a naive
per-query NumPy loop (the straightforward ``argmin(((R - q) ** 2).sum(1))`` for each query).

Both find the exact L2 nearest neighbour of each query among N references of dimension D
(default: 10 000 RGB views of 64 x 64 px, D = 12 288). fpt's search is timed in two modes:
references held in memory (manifolds up to 2 GiB) and streamed from the HDF5 file in chunks
(larger manifolds). The naive loop runs on fewer queries (its per-query cost is constant) and its
rate is compared directly. Results are checked to agree.

    python benchmarks/bench_manifold.py [--refs 10000] [--queries 256] [--naive-queries 16] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--refs", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=64, help="view side; D = 3 * size^2")
    ap.add_argument("--queries", type=int, default=256)
    ap.add_argument("--naive-queries", type=int, default=16)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("FPT_THREADS", "1")))
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from fpt.manifold.spaces import SpaceSpec
    from fpt.manifold.build import write_manifold
    from fpt.manifold.store import Manifold

    rng = np.random.default_rng(0)
    d = 3 * args.size * args.size
    # Correlated "images": a smooth random field per row plus noise, in [0, 1] like pixels.
    refs = np.clip(0.5 + 0.2 * rng.standard_normal((args.refs, 1), dtype=np.float32)
                   + 0.1 * rng.standard_normal((args.refs, d), dtype=np.float32), 0, 1).astype(np.float32)
    picks = rng.choice(args.refs, args.queries, replace=False)
    queries = np.clip(refs[picks] + 0.02 * rng.standard_normal((args.queries, d), dtype=np.float32), 0, 1)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.h5"
        t = time.perf_counter()
        write_manifold(path, {"rgb": (SpaceSpec("rgb", size=args.size), refs)}, [f"r{i}" for i in range(args.refs)])
        t_write = time.perf_counter() - t
        print(f"manifold: {args.refs} refs x {d} dims ({refs.nbytes / 2**20:.0f} MiB), written in {t_write:.1f}s; "
              f"threads={args.threads}, device={args.device}")

        with Manifold(path, device=args.device) as m:
            sp = m.space("rgb")
            sp.load(args.device)
            sp.nearest(queries[:8])  # warm-up
            t = time.perf_counter()
            nb_mem = sp.nearest(queries)
            t_mem = time.perf_counter() - t
        with Manifold(path, device=args.device, memory_budget=0) as m:
            t = time.perf_counter()
            nb_stream = m.space("rgb").nearest(queries)
            t_stream = time.perf_counter() - t

    nq = min(args.naive_queries, args.queries)
    t = time.perf_counter()
    naive_idx = np.empty(nq, dtype=np.int64)
    for i in range(nq):
        naive_idx[i] = np.argmin(((refs - queries[i]) ** 2).sum(axis=1))
    t_naive = time.perf_counter() - t

    assert np.array_equal(nb_mem.index[:nq], naive_idx), "chunked search disagrees with the naive loop"
    assert np.array_equal(nb_mem.index, nb_stream.index)
    assert np.array_equal(nb_mem.index, picks), "a query's nearest reference should be its source"

    rate_naive = nq / t_naive
    rate_mem = args.queries / t_mem
    rate_stream = args.queries / t_stream
    print(f"{'method':<38}{'queries':>8}{'seconds':>10}{'proj/s':>10}{'vs naive':>10}")
    print(f"{'naive NumPy loop, one query at a time':<38}{nq:>8}{t_naive:>10.2f}{rate_naive:>10.1f}{1.0:>9.1f}x")
    print(f"{'fpt chunked torch, in memory':<38}{args.queries:>8}{t_mem:>10.2f}{rate_mem:>10.1f}{rate_mem / rate_naive:>9.1f}x")
    print(f"{'fpt chunked torch, streamed from HDF5':<38}{args.queries:>8}{t_stream:>10.2f}{rate_stream:>10.1f}"
          f"{rate_stream / rate_naive:>9.1f}x")


if __name__ == "__main__":
    main()
