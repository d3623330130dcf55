"""Per-image embedding time of an extractor at several inference window grids, in one run.

The grids are timed interleaved (1 x 1, 3 x 3, 5 x 5, ... then again) so that a change in the
machine's load hits every grid alike. Image decoding is included (it is part of the cost).

Usage (repo root): python benchmarks/bench_windows.py ROOT [--windows 3,5,1] [--threads 1] [--every 3]
ROOT holds images in sub-folders (e.g. the T2I copies used in docs/extractor-v2.md).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from fpt.extractor.checkpoint import load_extractor
from fpt.extractor.embed import iter_embeddings
from fpt.images import find_images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path)
    ap.add_argument("--extractor", type=Path, default=None, help="checkpoint (default: the shipped one)")
    ap.add_argument("--windows", default="3,5,1", help="comma-separated n for n x n grids")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--every", type=int, default=3, help="use every n-th image")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    paths = find_images([args.root])[:: args.every]
    ex = load_extractor(args.extractor, device="cpu")
    grids = [int(w) for w in args.windows.split(",")]
    res: dict[int, list[float]] = {w: [] for w in grids}
    for _ in range(args.repeats):
        for w in grids:
            t0 = time.perf_counter()
            n = sum(1 for _ in iter_embeddings(ex, paths, windows=w))
            res[w].append((time.perf_counter() - t0) / max(1, n) * 1000)
    print(f"{len(paths)} images from {args.root}, {args.threads} thread(s); ms/image per repeat:")
    for w, v in res.items():
        print(f"  {w} x {w} windows: {', '.join(f'{x:.0f}' for x in v)}")


if __name__ == "__main__":
    main()
