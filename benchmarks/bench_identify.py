"""Benchmark: `fpt identify` throughput and peak memory vs the authors' per-probe compute graph.

    python benchmarks/bench_identify.py [--images 1000] [--models 100] [--baseline-probes 3] [--threads 1]

Ours: the real command, ``fpt identify DIR --json``, in a child process, over ``--images`` 512 x 512
PNG files against a gallery of ``--models`` enrolled models (random fingerprints under the shipped
extractor's hash; identify's cost does not depend on their values). The files are symlinks to 20
distinct images, so every probe is really decoded, windowed and embedded. Peak memory is the
child's maximum resident set size.

Baseline: the authors' inference graph per probe (paper 001 code): DnCNN-17 (64 channels) residual
on each of 9 windows of 128 x 128, a ResNet-50 encoder run twice (on the residual and on its
spectrum) and a U-Net-style decoder (4 up-stages with skip connections from the encoder), random
weights (cost does not depend on them). It is run on ``--baseline-probes`` probes in a child
process and its per-probe time is extrapolated to ``--images`` (said in the output).

Both sides use the same number of torch threads, in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _make_inputs(work: Path, n_images: int, n_models: int) -> tuple[Path, Path]:
    from PIL import Image

    from fpt.extractor.checkpoint import load_extractor
    from fpt.gallery import Gallery, add_embeddings, calibrate, save_gallery

    rng = np.random.default_rng(0)
    src = work / "src"
    src.mkdir()
    for i in range(20):
        # smooth content + a faint periodic pattern: a plausible, compressible 512 px image
        base = rng.random((64, 64, 3))
        img = np.kron(base, np.ones((8, 8, 1)))
        img += 0.02 * np.sin(np.arange(512) * np.pi / 2)[None, :, None] + rng.normal(0, 0.01, img.shape)
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(src / f"s{i:02d}.png")
    probes = work / "probes"
    probes.mkdir()
    for i in range(n_images):
        os.symlink(src / f"s{i % 20:02d}.png", probes / f"p{i:04d}.png")
    ex = load_extractor(None, device="cpu")
    g = Gallery(path=work / "gallery.h5")
    d = int(ex.embedding_dim)
    for m in range(n_models):
        e = rng.normal(size=(10, d)).astype(np.float32)
        add_embeddings(g, f"model{m:03d}", e, [f"m{m}_{k}" for k in range(10)], [f"h{m}_{k}" for k in range(10)],
                       np.zeros(10, bool), ex.sha256, d)
    calibrate(g, 0.05)
    save_gallery(g)
    return probes, g.path


#: runs the fpt CLI in a child and reports the child's own peak RSS (kB) as the last stderr line
_LAUNCH = ("import resource, sys\n"
           "from fpt.cli import main\n"
           "rc = main(sys.argv[1:])\n"
           "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
           "sys.exit(rc)\n")
_FLOOR = ("import resource, sys\n"
          "import fpt.cli\n"
          "from fpt.extractor.checkpoint import load_extractor\n"
          "load_extractor(None, 'cpu')\n"
          "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n")


def _child(args: list[str], env: dict, code: str = _LAUNCH) -> tuple[float, float, str]:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode not in (0, 10):
        sys.exit(f"child failed ({p.returncode}): {p.stderr[-2000:]}")
    peak_mb = int(p.stderr.strip().splitlines()[-1]) / 1024.0
    return wall, peak_mb, p.stdout


# ---------------------------------------------------------------- the authors' graph


def _baseline_net():
    import torch
    from torch import nn
    from torchvision.models import resnet50

    class DnCNN17(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers = [nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(inplace=True)]
            for _ in range(15):
                layers += [nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)]
            layers.append(nn.Conv2d(64, 3, 3, padding=1))
            self.body = nn.Sequential(*layers)

        def forward(self, x):
            return x - self.body(x)

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            r = resnet50(weights=None)
            self.stem = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool)
            self.layers = nn.ModuleList([r.layer1, r.layer2, r.layer3, r.layer4])

        def forward(self, x):
            feats = []
            x = self.stem(x)
            for layer in self.layers:
                x = layer(x)
                feats.append(x)
            return feats  # 256@32, 512@16, 1024@8, 2048@4 for 128 px input

    class Decoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            chans = [2048, 1024, 512, 256, 64]
            self.ups = nn.ModuleList(nn.ConvTranspose2d(chans[i], chans[i + 1], 2, stride=2) for i in range(4))
            self.convs = nn.ModuleList(
                nn.Sequential(nn.Conv2d(chans[i + 1] * (2 if i < 3 else 1), chans[i + 1], 3, padding=1),
                              nn.ReLU(inplace=True)) for i in range(4))
            self.out = nn.Conv2d(64, 3, 1)

        def forward(self, feats):
            x = feats[-1]
            skips = feats[-2::-1]
            for i, (up, conv) in enumerate(zip(self.ups, self.convs)):
                x = up(x)
                if i < 3:
                    x = torch.cat([x, skips[i]], dim=1)
                x = conv(x)
            return self.out(x)

    class AuthorsGraph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dncnn, self.enc, self.dec = DnCNN17(), Encoder(), Decoder()

        def forward(self, x):
            res = self.dncnn(x)
            spec = torch.log(torch.fft.fft2(res).abs() + 1e-8)
            f_res = self.enc(res)
            f_spec = self.enc(spec)  # the encoder run a second time
            recon = self.dec(f_res)
            return torch.flatten(nn.functional.adaptive_avg_pool2d(f_spec[-1], 1), 1), recon

    return AuthorsGraph().eval()


def run_baseline(n_probes: int, threads: int) -> None:
    import torch

    from fpt.images import load_image, sliding_windows

    torch.set_num_threads(threads)
    net = _baseline_net()
    from PIL import Image

    tmp = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(1)
    Image.fromarray((rng.random((512, 512, 3)) * 255).astype(np.uint8)).save(tmp / "p.png")
    times = []
    with torch.inference_mode():
        for _ in range(n_probes):
            t0 = time.perf_counter()
            img = load_image(tmp / "p.png")
            crops, _ = sliding_windows(img, 128, 3)
            emb, _ = net(crops)
            emb.mean(0)
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"per_probe_s": float(np.mean(times)), "peak_mb": peak, "probes": n_probes}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--models", type=int, default=100)
    ap.add_argument("--baseline-probes", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--_baseline", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._baseline:
        run_baseline(args._baseline, args.threads)
        return 0
    env = dict(os.environ, FPT_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        print(f"preparing {args.images} probes (512 x 512) and a {args.models}-model gallery ...", flush=True)
        probes, gallery = _make_inputs(work, args.images, args.models)
        cmd = ["--threads", str(args.threads), "identify", str(probes), "--gallery", str(gallery), "--json",
               "--device", "cpu"]
        wall, peak_ours, out = _child(cmd, env)
        n = json.loads(out)["summary"]["images"]
        assert n == args.images, n
        _, floor, _ = _child([], env, _FLOOR)
        ours_rate = n / wall
        print(f"ours     : {n} probes in {wall:.1f} s (process start, model load and decode included) "
              f"= {ours_rate:.2f} probes/s, peak RSS {peak_ours:.0f} MB "
              f"(of which {floor:.0f} MB is Python + torch + the loaded extractor before any image)", flush=True)
        p = subprocess.run([sys.executable, __file__, "--_baseline", str(args.baseline_probes), "--threads",
                            str(args.threads)], env=env, capture_output=True, text=True, check=True)
        b = json.loads(p.stdout.strip().splitlines()[-1])
        base_rate = 1.0 / b["per_probe_s"]
        print(f"baseline : authors' graph (DnCNN-17 + ResNet-50 x2 + U-Net decoder, 9 windows of 128 px): "
              f"{b['per_probe_s']:.2f} s/probe measured on {b['probes']} probes, extrapolated to {n}: "
              f"{n * b['per_probe_s']:.0f} s = {base_rate:.3f} probes/s, peak RSS {b['peak_mb']:.0f} MB")
        print(f"speed-up : {ours_rate / base_rate:.1f}x faster ({args.threads} torch thread(s) each, same run)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
