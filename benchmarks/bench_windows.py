"""Per-image embedding time of one or more extractors at several inference window grids, in one run.

Every (extractor, grid) pair is timed interleaved (first extractor 3 x 3, 5 x 5, ..., second
extractor ..., then all again) so that a change in the machine's load hits every pair alike.
Image decoding is included (it is part of the cost). The ratio column is the median time of a
pair over that of the first pair.

Usage (repo root):
  python benchmarks/bench_windows.py ROOT [--extractor A.pt --extractor B.pt] [--windows 3,4,5] [--threads 1]
ROOT holds images in sub-folders (e.g. the T2I copies used in docs/extractor-v2.md). Without
--extractor the shipped one is timed; a checkpoint's own grid is used with --windows own.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from fpt.extractor.checkpoint import load_extractor
from fpt.extractor.embed import iter_embeddings
from fpt.images import find_images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path)
    ap.add_argument("--extractor", type=Path, action="append", default=None,
                    help="checkpoint (repeatable; default: the shipped one)")
    ap.add_argument("--windows", default="3,5,1", help="comma-separated n for n x n grids, or 'own'")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--every", type=int, default=3, help="use every n-th image")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    paths = find_images([args.root])[:: args.every]
    extractors = [load_extractor(p, device="cpu") for p in (args.extractor or [None])]
    pairs = [(i, ex.preprocessing.windows if args.windows == "own" else int(w))
             for i, ex in enumerate(extractors) for w in args.windows.split(",")]
    res: dict[tuple[int, int], list[float]] = {p: [] for p in pairs}
    for _ in range(args.repeats):
        for i, w in pairs:
            t0 = time.perf_counter()
            n = sum(1 for _ in iter_embeddings(extractors[i], paths, windows=w))
            res[(i, w)].append((time.perf_counter() - t0) / max(1, n) * 1000)
    print(f"{len(paths)} images from {args.root}, {args.threads} thread(s); ms/image per repeat:")
    first = statistics.median(res[pairs[0]])
    for (i, w), v in res.items():
        ex = extractors[i]
        name = f"{ex.path.name} ({ex.short_id}, {ex.net.config['backbone']} x{ex.net.config['width']})"
        print(f"  {name}, {w} x {w} windows: {', '.join(f'{x:.0f}' for x in v)}"
              f"  -> {statistics.median(v) / first:.2f}x the first")


if __name__ == "__main__":
    main()
