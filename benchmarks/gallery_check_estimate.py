"""Does the gallery check's expected top-1 accuracy predict what `fpt identify` then does?

For each group of ``runs/evalroot`` (``benchmarks/make_evalroot.py``) and k images per model:
10 random galleries of k images per model; the check's estimate (:func:`fpt.attribution.check_gallery`,
held out over the gallery's own images) next to the top-1 accuracy of identifying every *other*
image of those models against that gallery, both under the whitened and the cosine ranking.
No threshold is chosen here: it only measures how honest a number the check prints is.

Usage (repo root): python benchmarks/gallery_check_estimate.py [--root runs/evalroot]
                       [--groups t2i,main,cnndetection-jpeg] [--shots 5,10,20] [--draws 10]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import fpt
from fpt.attribution import check_gallery, identify_embeddings
from fpt.evaluation import discover_models
from fpt.gallery import Gallery, ModelEntry


def group_embeddings(root: Path, group: str, ex) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of the images `fpt eval` takes as ``group``'s models, embedded as `fpt enroll` does."""
    embs, labels = [], []
    for folder in discover_models(root):
        if folder.group == group:
            res = fpt.embed(folder.paths, ex, device="cpu")
            embs.append(res.matrix)
            labels += [folder.label] * len(res.images)
    return np.concatenate(embs), np.array(labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="runs/evalroot")
    ap.add_argument("--groups", default="t2i,main,cnndetection-jpeg")
    ap.add_argument("--shots", default="5,10,20")
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--extractor", default=None)
    a = ap.parse_args()
    root = Path(a.root)
    if not root.is_dir():
        raise SystemExit(f"{root} not found: run benchmarks/make_evalroot.py first")
    ex = fpt.load_extractor(a.extractor, device="cpu")
    print("| group | k | ranking | check's estimate | identify on the other images |")
    print("|---|---|---|---|---|")
    for group in a.groups.split(","):
        emb, lab = group_embeddings(root, group, ex)
        for k in (int(s) for s in a.shots.split(",")):
            if np.min(np.unique(lab, return_counts=True)[1]) <= k:
                continue  # no image left to identify for some model
            for rank in ("whitened", "cosine"):
                est, act = [], []
                for seed in range(a.draws):
                    rng = np.random.default_rng(seed)
                    g, probe = Gallery(Path("<benchmark>")), []
                    for m in np.unique(lab):
                        idx = rng.permutation(np.flatnonzero(lab == m))
                        g.models[str(m)] = ModelEntry(str(m), emb[idx[:k]])
                        probe += list(idx[k:])
                    est.append(check_gallery(g, rank=rank).loo_accuracy)
                    ids = identify_embeddings(g, emb[probe], top_k=1, threshold=-1.0, rank=rank)
                    act.append(np.mean([r.model == t for r, t in zip(ids, lab[probe])]))
                print(f"| {group} | {k} | {rank} | {np.mean(est):.3f} | {np.mean(act):.3f} |", flush=True)


if __name__ == "__main__":
    main()
