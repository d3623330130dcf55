"""Give an extractor checkpoint another inference window grid without retraining.

Does what the end of ``fpt train --windows N`` does, on the checkpoint's own network weights:
rebuilds the run's model and photo split from the recorded config, refits the fingerprint
whitening with N x N windows on training models only, reruns the held-out validation, and
writes a new checkpoint (its sha256 changes, so galleries and the cohort must be rebuilt).

Usage (repo root): python examples/refit_windows.py IN.pt OUT.pt --windows 4 [--pool runs/pool-default.h5]
"""

from __future__ import annotations

import argparse
import sys

import torch

from fpt.extractor.checkpoint import load_extractor
from fpt.extractor.train import refit_for_windows
from fpt.storage import check_writable


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    ap.add_argument("--windows", type=int, required=True)
    ap.add_argument("--pool", default=None, help="the pool it was trained on, if not at the recorded path")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--force", action="store_true", help="overwrite OUT")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    check_writable(args.out, what="extractor checkpoint", overwrite=args.force)
    ex = load_extractor(args.checkpoint, device="cpu")
    sha = refit_for_windows(ex, args.windows, args.out, pool=args.pool, log=lambda m: print(m, file=sys.stderr))
    print(f"wrote {args.out} (sha256 {sha}), {args.windows} x {args.windows} windows")


if __name__ == "__main__":
    main()
