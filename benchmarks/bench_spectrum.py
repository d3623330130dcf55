"""Spectra per second: batched torch path vs a straightforward per-image NumPy loop.

Both compute, for every image (3 x 256 x 256): the high-pass residual (image minus its 3x3 box
blur, reflect-padded), the per-channel power spectrum |DFT|^2 / (HW), the azimuthal integral
(paper 000 Eq. 12, of the channel-mean power) and the HP ratio (Eq. 13). Results are checked to
agree before timing is reported.

    python benchmarks/bench_spectrum.py              # 512 images, 2 threads
    python benchmarks/bench_spectrum.py --n 128 --threads 1 --batch 32

Each path is timed ``--repeat`` times over all images and the best time is kept (the machine is
shared; the best run is the least disturbed one). OMP_WAIT_POLICY defaults to PASSIVE: on an
oversubscribed machine, spinning OpenMP threads make torch's 2-thread path 5-20x slower.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np


def numpy_baseline(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One image at a time, plain NumPy (ring index precomputed once, as anyone would)."""
    n, c, h, w = images.shape
    m = min(h, w)
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    ring = np.floor(np.sqrt(fy**2 + fx**2) * m + 0.5).astype(np.int64).ravel()
    n_rings = m // 2
    ring[ring >= n_rings] = n_rings
    counts = np.bincount(ring, minlength=n_rings + 1)[:n_rings]
    ais, hps = [], []
    for img in images:
        pad = np.pad(img, ((0, 0), (1, 1), (1, 1)), mode="reflect")
        blur = sum(pad[:, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)) / 9.0
        res = img - blur
        f = np.fft.fft2(res, axes=(-2, -1))
        power = (f.real**2 + f.imag**2) / (h * w)
        pm = power.mean(0).ravel()
        sums = np.bincount(ring, weights=pm, minlength=n_rings + 1)[:n_rings]
        ai = 2 * math.pi * sums / counts
        ais.append(ai)
        hps.append(ai[n_rings // 2 :].sum() / ai.sum())
    return np.stack(ais), np.array(hps)


def torch_batched(images, batch: int, device):
    import torch

    from fpt.residual import build_residual
    from fpt.spectrum import azimuthal_integral_fast, hp_ratio

    res = build_residual("highpass").to(device)
    ais, hps = [], []
    with torch.no_grad():
        for i in range(0, images.shape[0], batch):
            x = images[i : i + batch].to(device, non_blocking=True)
            ai = azimuthal_integral_fast(res(x), channel_mean=True)  # AI of the channel-mean power
            ais.append(ai)
            hps.append(hp_ratio(ai))
    ai, hp = torch.cat(ais), torch.cat(hps)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return ai.cpu().numpy(), hp.cpu().numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    # Must be set before torch starts its OpenMP runtime.
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from fpt.devices import select_device

    torch.set_num_threads(args.threads)
    device = select_device(args.device)
    rng = np.random.default_rng(0)
    # Smooth-ish random images (noise + low-frequency content), float32 in [0, 1].
    imgs = rng.random((args.n, 3, args.size, args.size), dtype=np.float32)
    imgs_t = torch.from_numpy(imgs)

    # Warm-up (FFT plans, allocator), then time each path once over all images.
    torch_batched(imgs_t[: args.batch], args.batch, device)
    numpy_baseline(imgs[:2])

    t_torch = t_numpy = math.inf
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        ai_t, hp_t = torch_batched(imgs_t, args.batch, device)
        t_torch = min(t_torch, time.perf_counter() - t0)
        t0 = time.perf_counter()
        ai_n, hp_n = numpy_baseline(imgs)
        t_numpy = min(t_numpy, time.perf_counter() - t0)

    np.testing.assert_allclose(ai_t, ai_n, rtol=2e-3, atol=1e-9)
    np.testing.assert_allclose(hp_t, hp_n, rtol=1e-4, atol=1e-6)
    sps_t, sps_n = args.n / t_torch, args.n / t_numpy
    print(
        f"images: {args.n} x 3 x {args.size} x {args.size}, threads: {torch.get_num_threads()}, device: {device}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, best of {args.repeat}"
    )
    print(f"numpy per-image loop : {sps_n:8.1f} spectra/s ({t_numpy:.2f} s)")
    print(f"torch batched ({args.batch:>3}) : {sps_t:8.1f} spectra/s ({t_torch:.2f} s)")
    print(f"speed-up             : {sps_t / sps_n:8.2f}x  (results agree: max |dHP| = {np.abs(hp_t - hp_n).max():.1e})")


if __name__ == "__main__":
    main()
