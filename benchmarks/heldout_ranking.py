"""Held-out *synthetic* architectures: k-shot identification with the gallery's whitened ranking
at several shrinkages, against raw cosine. This is where ``GALLERY_WHITENING_SHRINKAGE`` was
chosen (docs/extractor-v2.md §10): never on real generators.

The held-out models and photos are those of the checkpoint's own training run (rebuilt from its
recorded config, as ``benchmarks/heldout_windows.py`` does), embedded as ``fpt`` embeds files
(n x n windows averaged, checkpoint whitening applied), 20 images per model. Galleries: 20 random
draws of ``k`` images per model, for 5 random models and for all of them; every other image of
those models is a probe.

Usage (repo root): python benchmarks/heldout_ranking.py [--extractor X.pt] [--pool P.h5]
                       [--shrinkages 0.1,0.3,1,3,10] [--shots 2,5,10]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from fpt.extractor.checkpoint import load_extractor
from fpt.extractor.data import stable_seed
from fpt.extractor.train import _photos_of, recorded_run
from fpt.extractor.whitening import training_model_embeddings
from fpt.metrics import identification as I


def heldout_embeddings(extractor: str | None, pool: str | None) -> tuple[np.ndarray, np.ndarray]:
    ex = load_extractor(extractor, device="cpu")
    run = recorded_run(ex, pool=pool)
    photos = _photos_of(run.cfg, run.val_bank)
    emb, labels = training_model_embeddings(ex, run.source, run.val_ids, photos, images_per_model=20,
                                            seed=stable_seed("heldout-images", run.cfg.seed))
    return (ex.whitening.apply(emb) if ex.whitening is not None else emb), np.asarray(labels, str)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--extractor", default=None)
    ap.add_argument("--pool", default=None, help="override the recorded pool path")
    ap.add_argument("--shrinkages", default="0.1,0.3,1,3,10")
    ap.add_argument("--shots", default="2,5,10")
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    emb, labels = heldout_embeddings(args.extractor, args.pool)
    models = np.unique(labels)
    variants: list[float | None] = [None] + [float(s) for s in args.shrinkages.split(",")]
    print(f"{len(models)} held-out models x {len(labels) // len(models)} images; mean {args.draws} draws; "
          "columns: raw cosine, then whitened ranking at each shrinkage")
    print(f"{'models':>6} {'k':>3} " + " ".join(f"{'cosine' if s is None else f'w {s:g}':>8}" for s in variants))
    for n_models in (5, len(models)):
        for k in (int(x) for x in args.shots.split(",")):
            acc: dict = {s: [] for s in variants}
            for r in range(args.draws):
                rng = np.random.default_rng(r)
                pick = rng.choice(models, n_models, replace=False) if n_models < len(models) else models
                keep = np.isin(labels, pick)
                e, lab = emb[keep], labels[keep]
                split = I.k_shot_split(lab, k, rng)
                for s in variants:
                    acc[s].append(I.identify_k_shot(e, lab, split=split, shrinkage=s).accuracy)
            print(f"{n_models:>6} {k:>3} " + " ".join(f"{np.mean(acc[s]):8.3f}" for s in variants), flush=True)


if __name__ == "__main__":
    main()
