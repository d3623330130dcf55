"""Held-out *synthetic* architectures, whole images, at several inference window grids.

The same validation ``fpt train`` runs at its end (held-out architectures of the pool applied
to held-out photos at full size, embedded as ``fpt`` embeds files, with the checkpoint's
whitening), but for an existing checkpoint and each n x n grid asked for. It rebuilds the
training run's split from the checkpoint's own recorded config (pool, seed, hold-out), so the
models and photos are the ones that checkpoint never trained on.

Usage (repo root): python benchmarks/heldout_windows.py [--extractor X.pt] [--windows 3,4,5] [--pool P.h5]
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch

from fpt.extractor.checkpoint import Extractor, load_extractor
from fpt.extractor.train import heldout_image_validation, recorded_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--extractor", default=None)
    ap.add_argument("--windows", default="3,4,5")
    ap.add_argument("--pool", default=None, help="override the recorded pool path")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    ex = load_extractor(args.extractor, device="cpu")
    run = recorded_run(ex, pool=args.pool)
    print(f"{ex.path} ({ex.short_id}): {len(run.val_ids)} held-out models; recorded "
          f"{json.dumps(ex.config.get('validation_whitening', {}).get('whitened', {}))}")
    for w in (int(x) for x in args.windows.split(",")):
        pre = dataclasses.replace(ex.preprocessing, windows=w)
        exw = Extractor(ex.net, pre, ex.config, ex.sha256, torch.device("cpu"), ex.path, ex.whitening)
        r = heldout_image_validation(run.cfg, exw, ex.whitening, run.source, run.val_ids, run.val_bank)
        print(f"  {w} x {w}: plain {json.dumps(r['plain'])}  whitened {json.dumps(r['whitened'])}", flush=True)


if __name__ == "__main__":
    main()
