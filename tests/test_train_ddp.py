"""A 2-process CPU DDP smoke run of `fpt train` under torchrun (gloo backend)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import torch
from PIL import Image


def test_torchrun_two_process_cpu_smoke(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        arr = (rng.random((40, 40, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(photos / f"p{i}.png")
    script = tmp_path / "fpt_entry.py"
    script.write_text("from fpt.cli import console_main\nconsole_main()\n")
    out = tmp_path / "ddp.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1", FPT_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           "train", "--pool", "toy:6", "--images", str(photos), "--out", str(out), "--steps", "4", "--P", "3",
           "--K", "2", "--backbone", "resnet10", "--width", "0.125", "--crop-size", "32", "--embedding-dim", "16",
           "--holdout-frac", "0.34", "--val-every", "2", "--ckpt-every", "2", "--crops-per-image", "2",
           "--warmup", "1", "--device", "cpu", "--json"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from fpt.extractor.checkpoint import load_extractor

    ex = load_extractor(out, "cpu")
    assert ex.config["world_size"] == 2 and ex.config["steps"] == 4
    emb = ex.embed_crops(torch.rand(2, 3, 32, 32))
    assert emb.shape == (2, 16) and torch.isfinite(emb).all()
