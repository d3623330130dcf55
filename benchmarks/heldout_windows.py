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
from fpt.extractor.data import CropBank, split_models
from fpt.extractor.train import TrainConfig, build_source, heldout_image_validation


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--extractor", default=None)
    ap.add_argument("--windows", default="3,4,5")
    ap.add_argument("--pool", default=None, help="override the recorded pool path")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    ex = load_extractor(args.extractor, device="cpu")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    rec = {k: v for k, v in ex.config.items() if k in fields}
    rec["jpeg_quality"] = tuple(rec.get("jpeg_quality", (70, 100)))
    if args.pool:
        rec["pool"] = args.pool
    cfg = TrainConfig(**rec)
    source = build_source(cfg, torch.device("cpu"))
    bank = CropBank.from_folders(cfg.images, cfg.crop_size, crops_per_image=cfg.crops_per_image,
                                 max_images=cfg.max_images, seed=cfg.seed)
    _, val_bank = bank.split(cfg.val_image_frac, seed=cfg.seed)
    _, val_ids = split_models(source.model_ids, holdout_frac=cfg.holdout_frac,
                              holdout_pattern=cfg.holdout_pattern, seed=cfg.seed)
    assert sorted({i.split("/")[0] for i in val_ids}) == sorted(ex.config.get("heldout_archs", [])), \
        "the rebuilt split differs from the checkpoint's recorded held-out architectures"
    print(f"{ex.path} ({ex.short_id}): {len(val_ids)} held-out models; recorded "
          f"{json.dumps(ex.config.get('validation_whitening', {}).get('whitened', {}))}")
    for w in (int(x) for x in args.windows.split(",")):
        pre = dataclasses.replace(ex.preprocessing, windows=w)
        exw = Extractor(ex.net, pre, ex.config, ex.sha256, torch.device("cpu"), ex.path, ex.whitening)
        r = heldout_image_validation(cfg, exw, ex.whitening, source, val_ids, val_bank)
        print(f"  {w} x {w}: plain {json.dumps(r['plain'])}  whitened {json.dumps(r['whitened'])}", flush=True)


if __name__ == "__main__":
    main()
