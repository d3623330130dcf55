"""Copies of the dev-generator groups for the one `fpt eval` command of docs/extractor-v2.md §1.

Usage (repo root): python benchmarks/make_evalroot.py   -> runs/evalroot/{t2i,t2i-q90,t2i-q75,main,cnndetection-jpeg}
Copies, not symlinks (`fpt eval` does not follow links); the JPEG groups are the T2I images re-saved
by PIL at quality 90 and 75. Needs ../shared/data/dev-generators (the developers' reference data).
"""
import shutil
import sys
from pathlib import Path

from PIL import Image

D = Path("../shared/data/dev-generators")
R = Path("runs/evalroot")
if not D.is_dir():
    sys.exit(f"make_evalroot: {D} not found (the developers' reference data); nothing done")
T2I = ["ldm-txt2img-256", "sd14-invokeai", "hunyuan-dit-crop512", "pixart-alpha-crop512", "vqgan-clip-f16"]
MAIN = ["stylegan2-ffhq256", "ldm-txt2img-256", "sd14-invokeai"] + [f"fst-{s}" for s in ("la_muse", "mathura", "rain_princess", "scream", "udnie")]
for g, ms in (("t2i", T2I), ("main", MAIN)):
    for m in ms:
        shutil.copytree(D / m, R / g / m, dirs_exist_ok=True)
shutil.copytree(D / "cnndetection-jpeg", R / "cnndetection-jpeg", dirs_exist_ok=True)
for q in (90, 75):
    for p in sorted((R / "t2i").rglob("*")):
        if p.is_file() and p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"):
            o = R / f"t2i-q{q}" / p.relative_to(R / "t2i").with_suffix(".jpg")
            o.parent.mkdir(parents=True, exist_ok=True)
            Image.open(p).convert("RGB").save(o, quality=q)
for g in sorted(R.iterdir()):
    print(g.name, sum(1 for p in g.rglob("*") if p.is_file()))
