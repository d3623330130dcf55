"""Rebuild the licence-clean demo in examples/: probe images and a prebuilt gallery.

    pip install scikit-image        # only to obtain the public-domain / CC0 photos below
    python examples/make_demo.py    # about a minute on one CPU core

What it does:

1. Takes five photos bundled with scikit-image that carry no copyright restriction (see
   examples/README.md for each licence), downsamples them 2x (area) to wash out JPEG blocks, and
   cuts 128 x 128 content crops.
2. Trains four of fpt's own synthetic generative models (paper 001's shallow auto-encoders,
   :mod:`fpt.synth`) to reconstruct those photos, each to the papers' residual target, and passes
   the crops through them: every output carries its model's fingerprint.
3. Enrolls three of the models ("demo-deconv", "demo-nearest", "demo-bilinear") into
   ``examples/gallery.h5`` with the shipped extractor (or ``--extractor``), calibrates the
   threshold, and writes held-out probes: ``examples/probe.png`` (made by demo-deconv) and
   ``examples/probes/<model>.png`` including one from a fourth, never-enrolled model
   ("not-enrolled"), which should come back *unknown*.

Only the probes and the gallery (embeddings, not images) are kept, so the demo stays a few hundred
KB; the enrolled images are rebuilt here deterministically whenever you want them
(``--keep-images``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

HERE = Path(__file__).resolve().parent

#: (skimage.data function, licence as stated by scikit-image)
PHOTOS = [
    ("astronaut", "public domain (NASA)"),
    ("coffee", "CC0 (Rachel Michetti)"),
    ("chelsea", "CC0 (Stefan van der Walt)"),
    ("rocket", "public domain (SpaceX)"),
    ("hubble_deep_field", "public domain (NASA)"),
]

#: demo model name -> (architecture id from fpt.synth.space, seed)
MODELS = {
    "demo-deconv": ("K2-L1-post-deconv-relu-bn", 0),
    "demo-nearest": ("K1-L1-post-nearest-relu-none", 0),
    "demo-bilinear": ("K2-L2-pre-bilinear-tanh-in", 0),
    "not-enrolled": ("K1-L2-post-deconv-sigmoid-bn", 0),
}
ENROLLED = ["demo-deconv", "demo-nearest", "demo-bilinear"]
CROP = 128


def photo_crops(per_photo: int = 4) -> torch.Tensor:
    try:
        import skimage.data as skd
    except ImportError:
        sys.exit("make_demo.py needs scikit-image for its public-domain photos: pip install scikit-image")
    crops = []
    for name, _ in PHOTOS:
        arr = np.asarray(getattr(skd, name)(), dtype=np.float32) / 255.0
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        x = torch.from_numpy(arr[..., :3]).permute(2, 0, 1)[None]
        x = F.avg_pool2d(x, 2)[0]  # 2x area downsampling: removes JPEG block traces
        h, w = x.shape[-2:]
        g = torch.Generator().manual_seed(len(crops))
        for _ in range(per_photo):
            t = int(torch.randint(0, h - CROP + 1, (1,), generator=g))
            l = int(torch.randint(0, w - CROP + 1, (1,), generator=g))
            crops.append(x[:, t:t + CROP, l:l + CROP])
    return torch.stack(crops).clamp(0, 1)


def train_models(crops: torch.Tensor, steps: int) -> dict[str, torch.nn.Module]:
    from fpt.synth.nets import build_model
    from fpt.synth.space import parse_arch_id
    from fpt.synth.train import CropBank, TrainConfig, load_state, train_one

    g = torch.Generator().manual_seed(0)
    bank_crops = torch.stack([c[:, t:t + 64, l:l + 64] for c in crops
                              for t, l in torch.randint(0, CROP - 64 + 1, (16, 2), generator=g).tolist()])
    bank = CropBank(bank_crops)
    cfg = TrainConfig(size=64, max_steps=steps)
    models = {}
    for name, (arch, seed) in MODELS.items():
        spec = parse_arch_id(arch)
        state, rec = train_one(spec, seed, bank, cfg)
        print(f"  {name:14s} {arch:32s} {rec.steps:4d} steps, residual {rec.final_loss:.4f}"
              f"{'' if rec.reached_target else ' (target not reached)'}")
        torch.manual_seed(0)
        models[name] = load_state(build_model(spec, cfg.width, cfg.kernel), state).eval()
    return models


def save_png(img: torch.Tensor, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (img.permute(1, 2, 0).numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path, optimize=True)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE, help="output folder (default: examples/)")
    ap.add_argument("--extractor", type=Path, default=None, help="extractor checkpoint (default: shipped)")
    ap.add_argument("--steps", type=int, default=600, help="max training steps per synthetic model")
    ap.add_argument("--keep-images", type=Path, default=None, help="also keep every generated image here")
    ap.add_argument("--reuse-images", type=Path, default=None,
                    help="skip training: re-embed images kept earlier with --keep-images (e.g. after new weights)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from fpt.extractor.checkpoint import load_extractor
    from fpt.extractor.embed import ImageEmbedding, iter_embeddings
    from fpt.gallery import Gallery, add_embeddings, calibrate, save_gallery
    from fpt.storage import file_sha256
    from fpt.synth.nets import fingerprint

    work = Path(tempfile.mkdtemp(prefix="fpt-demo-"))
    try:
        files: dict[str, list[Path]] = {}
        if args.reuse_images:
            for name in MODELS:
                files[name] = sorted((args.reuse_images / name).glob("*.png"))
                if not files[name]:
                    sys.exit(f"no images for {name} in {args.reuse_images}")
            n = len(files[ENROLLED[0]])
            print(f"re-using {n} images per model from {args.reuse_images}")
        else:
            print("content: 5 public-domain / CC0 photos from scikit-image")
            crops = photo_crops()
            n = crops.shape[0]
            print(f"training {len(MODELS)} synthetic models on {n} crops")
            models = train_models(crops, args.steps)
            for name, model in models.items():
                out = fingerprint(model, "fd", crops)
                files[name] = [save_png(img, work / name / f"{i:02d}.png") for i, img in enumerate(out)]
        ex = load_extractor(args.extractor, device="cpu")
        gal_path = args.out / "gallery.h5"
        g = Gallery(path=gal_path)
        probe_idx = n - 1  # last crop of the last photo is never enrolled
        for name in ENROLLED:
            paths = [p for i, p in enumerate(files[name]) if i != probe_idx]
            res = [r for r in iter_embeddings(ex, paths) if isinstance(r, ImageEmbedding)]
            add_embeddings(g, name, np.stack([r.embedding for r in res]),
                           [f"(make_demo.py) {name}/{Path(r.path).name}" for r in res],
                           [file_sha256(r.path) for r in res], np.array([r.low_confidence for r in res]),
                           ex.sha256, int(ex.embedding_dim),
                           {"architecture": MODELS[name][0], "content": "scikit-image public-domain/CC0 photos"})
        cal = calibrate(g, 0.05)
        save_gallery(g)
        print(f"gallery: {gal_path} ({len(ENROLLED)} models x {n - 1} images, extractor {ex.sha256[:12]}, "
              f"threshold {cal.threshold:.4f} at FAR 0.05)")
        probes = args.out / "probes"
        if probes.exists():
            shutil.rmtree(probes)
        for name in MODELS:
            shutil.copyfile(files[name][probe_idx], probes.mkdir(parents=True, exist_ok=True) or probes / f"{name}.png")
        shutil.copyfile(files["demo-deconv"][probe_idx], args.out / "probe.png")
        print(f"probes: {args.out / 'probe.png'} and {probes}/")
        if args.keep_images and not args.reuse_images:
            shutil.copytree(work, args.keep_images, dirs_exist_ok=True)
            print(f"all generated images kept in {args.keep_images}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
