"""Synthetic-model training speed: fpt's pipeline vs a plain per-model loop, in one run.

Both train the same architectures and seeds at --size px (default 128) towards the paper's target
(reconstruction MSE <= 0.005) under the same step cap.

- plain loop: for each model a fresh model and a fresh DataLoader over the image files (every
  batch decodes its files and crops them), default memory format, all torch threads on one model,
  a fixed number of steps (it checks nothing) — what a first implementation does;
- fpt: one pre-decoded crop bank shared by all models (decoding counted in our time), early stop at
  the target (checked on a held-out batch), one process per core (--workers) with one thread each.

Prints seconds per model for both, the ratio, the share of models that reached the target, a
channels-last micro-measurement (per-step time, same model) and the projected CPU-hours for the
paper's 5760-model pool. Usage: python benchmarks/bench_synth.py [--images DIR] [--models 4]

Reach-target study (issue 14): ``--archs`` picks any ids (paper FD, grid or latent-decoder ``LD-*``),
``--patience N`` turns on the plateau rule, ``--no-plain`` skips the naive loop, e.g.
  python benchmarks/bench_synth.py --size 32 --width 16 --batch 16 --max-steps 100 --no-plain
  python benchmarks/bench_synth.py --size 32 --width 16 --batch 16 --max-steps 1000 --patience 5 --no-plain
  python benchmarks/bench_synth.py --archs 'LD-f8-z4-nearest-res-gn-silu-ae,LD-f16-z4-deconv-plain-none-silu-vq' \
      --size 64 --width 8 --batch 8 --max-steps 50 --no-plain

Models per launch (``--group G --seeds S``, S >= G): the same models are trained a second time with
G seeds of an architecture stacked into one ``torch.func.vmap`` launch (``fpt synth --group``), and
the ratio printed, e.g.
  python benchmarks/bench_synth.py --models 3 --seeds 4 --group 4 --size 32 --batch 16 --max-steps 100 --workers 1 --no-plain
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from fpt.images import find_images, load_image, random_crop
from fpt.synth.nets import build_model
from fpt.synth.pool import build_pool
from fpt.synth.space import parse_arch_id
from fpt.synth.train import CropBank, TrainConfig, model_seed, plan_jobs

ARCHS = ["K1-L1-post-nearest-none-none", "K1-L1-post-bilinear-relu-none", "K1-L2-pre-deconv-tanh-bn",
         "K1-L1-post-deconv-sigmoid-in", "K2-L1-post-nearest-relu-bn", "K2-L2-pre-bilinear-tanh-none"]


class FileCrops(Dataset):
    """The naive data path: decode a file and crop it on every access."""

    def __init__(self, files, size, seed):
        self.files, self.size, self.g = files, size, torch.Generator().manual_seed(seed)

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        return random_crop(load_image(self.files[i]), self.size, self.g)


def plain_loop(archs, seeds, files, cfg: TrainConfig, threads: int) -> tuple[float, list[float]]:
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    losses = []
    for arch in archs:
        for seed in seeds:
            spec = parse_arch_id(arch)
            torch.manual_seed(model_seed(arch, seed))
            model = build_model(spec, cfg.width, cfg.kernel)
            opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
            loader = DataLoader(FileCrops(files, cfg.size, seed), batch_size=cfg.batch, shuffle=True,
                                generator=torch.Generator().manual_seed(seed), drop_last=True)
            step, loss = 0, torch.tensor(float("nan"))
            while step < cfg.max_steps:
                for x in loader:
                    opt.zero_grad()
                    loss = (model(x) - x).square().mean()
                    loss.backward()
                    opt.step()
                    step += 1
                    if step >= cfg.max_steps:
                        break
            losses.append(float(loss.detach()))
    return time.perf_counter() - t0, losses


def channels_last_step_time(cfg: TrainConfig, bank: CropBank, steps: int = 10) -> dict[str, float]:
    torch.set_num_threads(1)
    out = {}
    for fmt_name, fmt in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
        torch.manual_seed(0)
        model = build_model(parse_arch_id("K1-L2-pre-deconv-tanh-bn"), cfg.width, cfg.kernel).to(memory_format=fmt)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        x = bank.crops[: cfg.batch].to(memory_format=fmt)
        for i in range(steps + 2):
            if i == 2:
                t0 = time.perf_counter()
            opt.zero_grad()
            (model(x) - x).square().mean().backward()
            opt.step()
        out[fmt_name] = (time.perf_counter() - t0) / steps
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/real/cbsd68")
    ap.add_argument("--models", type=int, default=4, help="architectures (x 1 seed) from a fixed list")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-steps", type=int, default=150)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--crops", type=int, default=256)
    ap.add_argument("--archs", default=None, help="comma-separated architecture ids (overrides --models)")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-3, help="Adam lr (fpt synth's default)")
    ap.add_argument("--patience", type=int, default=0, help="plateau rule: checks without a 2%% gain (0 = off)")
    ap.add_argument("--no-plain", action="store_true", help="skip the naive-loop comparison")
    ap.add_argument("--seeds", type=int, default=1, help="seeds per architecture")
    ap.add_argument("--group", type=int, default=1, help="also time G seeds per launch (fpt synth --group G)")
    args = ap.parse_args()

    archs = [a.strip() for a in args.archs.split(",")] if args.archs else ARCHS[: args.models]
    seeds = list(range(args.seeds))
    files = find_images(args.images)
    cfg = TrainConfig(size=args.size, batch=args.batch, max_steps=args.max_steps, width=args.width, lr=args.lr,
                      patience=args.patience)
    n = len(archs) * len(seeds)
    print(f"{n} models ({', '.join(archs)}), {args.size}px crops, batch {args.batch}, cap {args.max_steps} steps, "
          f"{len(files)} images from {args.images}, {os.cpu_count()} cores")

    # ours: decoding the bank is part of our cost
    import dataclasses
    import tempfile

    from fpt.synth.many import train_group
    from fpt.synth.train import train_one

    # warm-up (first-call costs of torch and vmap), so neither timed variant pays them
    warm = CropBank(torch.rand(8, 3, args.size, args.size))
    wcfg = dataclasses.replace(cfg, max_steps=1, val_batch=4)
    train_one(parse_arch_id(archs[0]), 0, warm, wcfg)
    if args.group > 1:
        train_group(parse_arch_id(archs[0]), [0, 1], warm, wcfg)

    t0 = time.perf_counter()
    bank = CropBank.from_folder(args.images, args.size, n_crops=args.crops)
    t_bank = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        trained, _ = build_pool(Path(tmp) / "bench.h5", plan_jobs([parse_arch_id(a) for a in archs], seeds),
                                bank, cfg, workers=args.workers, group=1)
    t_ours = time.perf_counter() - t0
    if args.group > 1:
        t1 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            grouped, _ = build_pool(Path(tmp) / "bench.h5", plan_jobs([parse_arch_id(a) for a in archs], seeds),
                                    bank, cfg, workers=args.workers, group=args.group)
        t_group = time.perf_counter() - t1
        same = sum(a.steps == b.steps for a, b in zip(sorted(trained, key=lambda r: r.model_id),
                                                        sorted(grouped, key=lambda r: r.model_id)))
        print(f"grouped x{args.group} : {t_group / n:7.2f} s/model wall vs one at a time {(t_ours - t_bank) / n:7.2f} "
              f"({(t_ours - t_bank) / t_group:.2f}x), same stop step for {same}/{n} models, "
              f"{sum(r.reached_target for r in grouped)}/{n} reached target")
    reached = sum(r.reached_target for r in trained)
    steps = [r.steps for r in trained]
    print(f"fpt pipeline : {t_ours / n:7.1f} s/model wall (bank {t_bank:.1f} s), {reached}/{n} reached target, "
          f"steps {steps}, losses {[round(r.final_loss, 4) for r in trained]}")
    cpu_s_per_model = t_ours * args.workers / n
    train_s = sum(r.wall_s for r in trained) / n
    print(f"projection   : {cpu_s_per_model:.1f} CPU-core-s/model ({train_s:.1f} s training only) -> 5760 models = "
          f"{5760 * cpu_s_per_model / 3600:.1f} CPU-core-hours "
          f"({5760 * cpu_s_per_model / 3600 / max(1, os.cpu_count() or 1):.1f} h on this machine); "
          f"paper: 83 s/model on one RTX 3090 = 133 GPU-hours")
    if args.no_plain:
        return

    t_plain, losses = plain_loop(archs, seeds, files, cfg, threads=os.cpu_count() or 1)
    reached_plain = sum(v <= cfg.target for v in losses)
    print(f"plain loop   : {t_plain / n:7.1f} s/model wall, {reached_plain}/{n} at target (last batch), "
          f"losses {[round(v, 4) for v in losses]}")
    print(f"speed-up     : {t_plain / t_ours:.2f}x (wall time for the same {n} models)")

    cl = channels_last_step_time(cfg, bank)
    print(f"channels-last: {cl['channels_last'] * 1e3:.0f} ms/step vs contiguous {cl['contiguous'] * 1e3:.0f} ms/step "
          f"({cl['contiguous'] / cl['channels_last']:.2f}x) (fpt default: channels-last on)")


if __name__ == "__main__":
    main()
