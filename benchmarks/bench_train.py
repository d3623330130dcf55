"""Training throughput of the fingerprint extractor: fpt's default vs the authors' compute graph.

Ours: the shipped recipe (learned 6x24 denoiser or high-pass residual -> per-channel DFT
log-magnitude -> ResNet-18 at width 0.25 on 64 px crops). Authors': DnCNN-17 at 64 channels
(frozen) -> DFT -> ResNet-50 (full width, ImageNet stem) on 128 px crops. Both: forward of the
residual and spectrum without gradient, forward + backward + AdamW step of the network with the
CE + batch-hard triplet loss, batch of P x K images. Throughput = images per second of training,
measured in this one run; the ratio is ours / theirs.

    FPT_THREADS=1 python benchmarks/bench_train.py [--batch 32] [--steps 4] [--residual denoiser]
"""

from __future__ import annotations

import argparse
import time

import torch

from fpt.devices import configure_threads
from fpt.extractor.denoiser import DnCNN
from fpt.extractor.losses import combined_loss
from fpt.extractor.net import build_net, count_parameters


def bench(net, crops: torch.Tensor, labels: torch.Tensor, steps: int) -> float:
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    net.train()

    def one():
        out = net(crops)
        loss = combined_loss(out.logits, out.embedding, labels).total
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    one()  # warm-up (allocator, kernels)
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    return steps * crops.shape[0] / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32, help="images per step (P x K; K = 4)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--residual", default="denoiser", choices=["denoiser", "highpass"])
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    threads = configure_threads(args.threads)
    torch.manual_seed(0)
    labels = torch.arange(args.batch // 4).repeat_interleave(4)
    classes = 200

    ours = build_net(backbone="resnet18", width=0.25, stem="small", crop_size=64, num_classes=classes,
                     residual=args.residual, denoiser={"depth": 6, "channels": 24} if args.residual == "denoiser" else None)
    theirs = build_net(backbone="resnet50", width=1.0, stem="imagenet", crop_size=128, num_classes=classes,
                       residual="denoiser", denoiser={"depth": 17, "channels": 64})
    assert isinstance(theirs.transform.residual.net, DnCNN)

    x64 = torch.rand(args.batch, 3, 64, 64)
    x128 = torch.rand(args.batch, 3, 128, 128)
    r_ours = bench(ours, x64, labels, args.steps)
    r_theirs = bench(theirs, x128, labels, max(1, args.steps // 2))
    print(f"threads={threads} batch={args.batch}")
    print(f"ours   ({args.residual} + resnet18 x0.25 @64px, {count_parameters(ours):,} trainable params): {r_ours:8.1f} img/s")
    print(f"theirs (DnCNN-17x64 + resnet50 @128px, {count_parameters(theirs):,} trainable params): {r_theirs:8.1f} img/s")
    print(f"speed-up ours / theirs: {r_ours / r_theirs:.1f}x")


if __name__ == "__main__":
    main()
