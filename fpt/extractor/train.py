"""Training loop for the fingerprint extractor: single process or DDP (torchrun), CPU or CUDA.

Fixes the faults of the authors' code (docs/science.md, "Known faults"): ``zero_grad`` every step, gradients
clipped *after* ``backward``, P x K batches, validation on held-out *architectures* (not seeds)
with its own real images, no hard-coded devices.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from fpt.devices import autocast_context, select_device
from fpt.errors import CheckpointError, ConfigError
from fpt.extractor.checkpoint import (Extractor, load_train_state, preprocessing_for, save_extractor,
                                      save_train_state)
from fpt.extractor.data import (Augment, CropBank, FingerprintStream, ModelSource, MultiSource, PoolSource, ToySource,
                                fingerprinted_set, split_models, stable_seed)
from fpt.extractor.losses import combined_loss
from fpt.extractor.net import FingerprintNet, build_net, count_parameters


@dataclass
class TrainConfig:
    """Every knob of a training run; stored (JSON) in the checkpoint it produces."""

    pool: str | None = None              # pool.h5 (comma-separated for several), or "toy:N[:S]"
    only_reached: bool = False           # train only on pool models that reached their target
    only_learned: bool = False           # ... or only on those that beat a constant output (fpt.synth.train.learned)
    models: str | None = None            # fnmatch pattern(s) of pool model ids to train on (ablations)
    images: list[str] = field(default_factory=list)
    out: str = "extractor.pt"
    steps: int = 2000
    P: int = 16
    K: int = 4
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 100
    schedule: str = "cosine"             # cosine | step | constant
    step_gamma: float = 0.9              # for schedule=step (paper 000: 0.9 every 100 steps)
    step_size: int = 100
    clip: float = 5.0
    ce_weight: float = 1.0
    triplet_weight: float = 1.0
    margin: float = 0.3
    backbone: str = "resnet18"
    width: float = 0.25
    stem: str = "small"
    embedding_dim: int = 128
    embed_from: str = "auto"             # projection | features | auto (better held-out AUC at the end)
    crop_size: int = 64
    residual: str = "highpass"
    denoiser: str | None = None          # path to denoiser weights (default: shipped)
    grey: bool = False
    windows: int = 3
    whiten_models: int = 120             # training models that fit the fingerprint whitening (0 = none)
    whiten_images: int = 12              # photos per model for it
    whiten_photos: int = 300             # real photos decoded for it (training images only)
    whiten_size: int = 256               # ... centre-cropped to at most this many px
    whiten_shrinkage: float = 0.01       # chosen on held-out architectures (fpt/extractor/whitening.py)
    seed: int = 0
    holdout_frac: float = 0.15
    holdout_pattern: str | None = None
    val_image_frac: float = 0.1
    val_images_per_model: int = 20
    val_every: int = 250
    ckpt_every: int = 250
    crops_per_image: int = 4
    max_images: int | None = None
    aug_jpeg_p: float = 0.0
    jpeg_quality: tuple[int, int] = (70, 100)
    aug_rrc_p: float = 0.0
    rrc_scale: tuple[float, float] = (0.6, 1.0)
    aug_blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 1.0)
    device: str = "auto"
    max_minutes: float | None = None     # wall-clock budget; the schedule anneals by time too
    amp: bool = True
    half: bool = True                    # store the final extractor in fp16
    preset: str | None = None

    def augment(self) -> Augment:
        return Augment(self.aug_jpeg_p, tuple(self.jpeg_quality), self.aug_rrc_p, tuple(self.rrc_scale),
                       self.aug_blur_p, tuple(self.blur_sigma))

    def validate(self) -> None:
        if self.steps < 1:
            raise ConfigError("--steps must be >= 1")
        if self.schedule not in ("cosine", "step", "constant"):
            raise ConfigError(f"unknown schedule '{self.schedule}'", hint="cosine, step or constant")
        if self.embed_from not in ("auto", "projection", "features"):
            raise ConfigError(f"unknown embedding source '{self.embed_from}'", hint="auto, projection or features")
        if self.residual not in ("highpass", "denoiser"):
            raise ConfigError(f"unknown residual '{self.residual}'", hint="highpass or denoiser")
        if self.lr <= 0:
            raise ConfigError("--lr must be positive")
        for name in ("aug_jpeg_p", "aug_rrc_p", "aug_blur_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"--{name.replace('_', '-')} must be a probability in [0, 1]")
        if self.whiten_models < 0 or self.whiten_shrinkage <= 0:
            raise ConfigError("--whiten-models must be >= 0 and --whiten-shrinkage positive")
        if self.ce_weight < 0 or self.triplet_weight < 0 or self.ce_weight + self.triplet_weight == 0:
            raise ConfigError("loss weights must be >= 0 and not both 0")


#: ``fpt train --preset default`` — the recipe of the shipped extractor (see README).
PRESETS: dict[str, dict] = {
    # Run as: torchrun --standalone --nproc_per_node=2 "$(python -c 'import sys,os;print(os.path.dirname(sys.executable))')/fpt" \
    #           --threads 1 train --preset default   (torchrun needs the real console script, not a pyenv shim)
    # (2 CPU processes x 1 thread; P x K = 16 x 4 per process). The real pool is photos only:
    # MNIST (28 px) is skipped automatically as smaller than the crop.
    "default": dict(pool="runs/pool-default.h5", images=["../shared/data/real/imagenet-sample", "../shared/data/real/cbsd68"],
                    out="fpt/weights/extractor.pt", steps=3000, P=16, K=4, lr=2e-3, warmup=50, schedule="cosine",
                    backbone="resnet18", width=0.25, crop_size=64, residual="highpass", seed=0, holdout_frac=0.15,
                    val_every=100, ckpt_every=100, crops_per_image=6, aug_jpeg_p=0.2, jpeg_quality=(75, 100),
                    aug_rrc_p=0.1, aug_blur_p=0.1, windows=4),  # 4 x 4 windows: docs/extractor-v2.md §8
    "smoke": dict(pool="toy:6", steps=30, P=4, K=4, width=0.125, backbone="resnet10", crop_size=32,
                  val_every=15, ckpt_every=15, val_images_per_model=12, holdout_frac=0.34, crops_per_image=2),
}


def parse_range(text: str | None, cast, what: str, bounds: tuple[float, float] | None = None):
    """'LO-HI' (or 'LO,HI') -> (LO, HI) cast by ``cast``; None stays None. ConfigError names ``what``
    for a malformed, reversed or out-of-``bounds`` range."""
    if text is None:
        return None
    try:
        lo, hi = (cast(v) for v in str(text).replace(",", "-").split("-", 1))
    except ValueError:
        raise ConfigError(f"{what} must look like LO-HI, got '{text}'") from None
    if lo > hi:
        raise ConfigError(f"{what}: LO must not exceed HI ('{text}')")
    if bounds is not None and not (bounds[0] <= lo and hi <= bounds[1]):
        raise ConfigError(f"{what}: '{text}' is outside {bounds[0]:g}-{bounds[1]:g}")
    return (lo, hi)


def training_config(preset: str | None, options: dict) -> TrainConfig:
    """The :class:`TrainConfig` of ``fpt train``: ``preset``'s recipe, overridden by every option
    that was given (not None). ``options`` are keyed by TrainConfig field; ``pool`` may be a list
    of paths, ``images`` a list of paths, ``jpeg_quality`` a 'LO-HI' string.

    Checks what can be checked before any work: the preset exists, a pool and real images are
    given, and every pool file exists (with a hint on how to build it).
    """
    from fpt.errors import InputError

    values: dict = {}
    if preset:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset '{preset}'", hint=f"choose one of {sorted(PRESETS)}")
        values.update(PRESETS[preset], preset=preset)
    given = {k: v for k, v in options.items() if v is not None}
    if isinstance(given.get("pool"), (list, tuple)):
        given["pool"] = ",".join(map(str, given["pool"])) or None
    if given.get("images") is not None:
        given["images"] = [str(i) for i in given["images"]] or None
    for key in ("out", "denoiser"):
        if key in given:
            given[key] = str(given[key])
    if isinstance(given.get("jpeg_quality"), str):
        given["jpeg_quality"] = parse_range(given["jpeg_quality"], int, "--jpeg-quality", (1, 100))
    values.update({k: v for k, v in given.items() if v is not None})
    pool = str(values.get("pool") or "")
    if not pool:
        raise ConfigError("no synthetic-model pool given",
                          hint="pass --pool POOL.h5 (build one with `fpt synth`) or --preset default")
    if "images" not in values:
        raise ConfigError("toy pools still need real photos" if pool.startswith("toy:") else "no real images given",
                          hint="pass --images DIR")
    if not pool.startswith("toy:"):
        for path in pool.split(","):
            if not Path(path).exists():
                hint = "build it with `fpt synth --images DIR --out POOL.h5` (see docs/commands.md)"
                if preset == "default" and "pool" not in given:
                    hint = "build the default pool first; examples/reproduce_default_extractor.sh runs the whole recipe"
                raise InputError("synthetic-model pool not found", path=path, hint=hint)
    return TrainConfig(**values)


@dataclass
class TrainResult:
    out: Path
    sha256: str
    steps: int
    wall_s: float
    images_per_s: float
    history: list[dict]
    final: dict
    baseline: dict
    n_train_models: int
    n_val_models: int
    net: FingerprintNet | None = None   # the trained network (with its classification head)
    embed_from: str = "projection"      # which embedding the saved extractor uses
    whitened: dict = field(default_factory=dict)  # held-out archs, whole images: saved extractor with whitening
    unwhitened: dict = field(default_factory=dict)  # ... and without it

    def summary(self) -> dict:
        """The run's record for people and programs (``fpt train --json``)."""
        return {"out": str(self.out), "sha256": self.sha256, "steps": self.steps,
                "wall_s": round(self.wall_s, 1), "images_per_s": round(self.images_per_s, 1),
                "train_models": self.n_train_models, "heldout_models": self.n_val_models,
                "embedding": self.embed_from, "heldout": self.chosen, "heldout_all": self.final,
                "heldout_images": self.unwhitened, "heldout_images_whitened": self.whitened,
                "baseline_azimuthal": self.baseline, "history": self.history}

    @property
    def chosen(self) -> dict:
        """Held-out metrics of the embedding the saved extractor actually uses."""
        if self.embed_from == "features":
            return {k[5:]: v for k, v in self.final.items() if k.startswith("feat_")}
        return {k: v for k, v in self.final.items() if not k.startswith("feat_")}


# ------------------------------------------------------------------------------- validation


def spectrum_baseline_embeddings(images: torch.Tensor) -> np.ndarray:
    """The plain azimuthal-integral baseline: log AI (paper 000 Eq. 12) of the high-pass residual
    spectrum, per RGB channel, z-scored per dimension over the set."""
    from fpt.residual import HighPassResidual
    from fpt.spectrum import azimuthal_integral_fast

    with torch.no_grad():
        r = HighPassResidual()(images.float())
        ai = azimuthal_integral_fast(r)                       # (N, 3, M/2)
        feats = torch.log(ai + 1e-10).flatten(1).numpy().astype(np.float64)
    feats = (feats - feats.mean(0)) / (feats.std(0) + 1e-8)
    return feats.astype(np.float32)


def verification_and_identification(emb: np.ndarray, labels: np.ndarray, *, seed: int = 0, k: int = 10,
                                    n_pairs: int = 4000) -> dict:
    """Zero-shot 1:1 verification AUC (N_S = 1) and k-shot 1:N identification accuracy."""
    from fpt.metrics.identification import identify_k_shot
    from fpt.metrics.verification import pair_scores, roc_auc, verification_pairs

    rng = np.random.default_rng(seed)
    a, b, same = verification_pairs(labels, n_pairs, rng)
    auc = roc_auc(pair_scores(emb, a, b), same)
    out = {"auc": float(auc)}
    counts = np.unique(labels, return_counts=True)[1]
    if counts.min() > k:
        out[f"id_acc_{k}shot"] = float(identify_k_shot(emb, labels, k=k, rng=np.random.default_rng(seed)).accuracy)
    return out


def embed_images(net: FingerprintNet, images: torch.Tensor, device: torch.device, batch: int = 256,
                 features: bool = False) -> np.ndarray:
    """Embeddings (projection; or pooled backbone features with ``features``) in eval mode."""
    was_training = net.training
    net.eval()
    out = []
    with torch.no_grad():
        for i in range(0, images.shape[0], batch):
            x = images[i : i + batch].to(device)
            spec = net.spectrum(x)
            with autocast_context(device):
                o = net.forward_spectrum(spec)
                out.append((o.features if features else o.embedding).float().cpu())
    net.train(was_training)
    return torch.cat(out).numpy()


# ------------------------------------------------------------------------------- helpers


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


def lr_factor(cfg: TrainConfig, step: int, time_frac: float = 0.0) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine / step / constant.

    With a time budget, the schedule's progress is the larger of the step fraction and the
    elapsed-time fraction, so a run cut short by ``--max-minutes`` still ends annealed.
    """
    if step < cfg.warmup:
        return (step + 1) / max(1, cfg.warmup)
    t = max((step - cfg.warmup) / max(1, cfg.steps - cfg.warmup), time_frac)
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    if cfg.schedule == "step":
        eff = step - cfg.warmup if time_frac <= 0 else t * (cfg.steps - cfg.warmup)
        return cfg.step_gamma ** (int(eff) // cfg.step_size)
    return 1.0


def build_source(cfg: TrainConfig, device: torch.device) -> ModelSource:
    if not cfg.pool:
        raise ConfigError("no synthetic-model pool given", hint="pass --pool POOL.h5 (build one with `fpt synth`)")
    if cfg.pool.startswith("toy:"):
        parts = cfg.pool.split(":")
        return ToySource(int(parts[1]), int(parts[2]) if len(parts) > 2 else 1)
    # Synthetic models are tiny: run them on the CPU unless training on CUDA.
    dev = device if device.type == "cuda" else "cpu"
    paths = [p for p in cfg.pool.split(",") if p]
    sources = [PoolSource(p, device=dev, only_reached=cfg.only_reached, models=cfg.models,
                          only_learned=cfg.only_learned) for p in paths]
    return sources[0] if len(sources) == 1 else MultiSource(sources)


def photo_bank(cfg: TrainConfig) -> CropBank:
    """The crops of the run's real photos (``cfg.images``)."""
    if not cfg.images:
        raise ConfigError("no real images given", hint="pass --images DIR (photos larger than the crop size)")
    return CropBank.from_folders(cfg.images, cfg.crop_size, crops_per_image=cfg.crops_per_image,
                                 max_images=cfg.max_images, seed=cfg.seed)


def run_split(cfg: TrainConfig, source: ModelSource,
              bank: CropBank) -> tuple[list[str], list[str], CropBank, CropBank]:
    """The run's held-out split: ``(train_ids, val_ids, train_bank, val_bank)`` — whole
    architectures held out of ``source``, whole photos held out of ``bank``. One function, so a
    rebuilt run (:func:`recorded_run`) holds out exactly what :func:`train` held out."""
    train_bank, val_bank = bank.split(cfg.val_image_frac, seed=cfg.seed)
    train_ids, val_ids = split_models(source.model_ids, holdout_frac=cfg.holdout_frac,
                                      holdout_pattern=cfg.holdout_pattern, seed=cfg.seed)
    return train_ids, val_ids, train_bank, val_bank


def state_path_for(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".state.pt")


def _estimate_normalisation(net: FingerprintNet, stream: FingerprintStream, device: torch.device) -> tuple[float, float]:
    """Mean / std of the log-magnitude spectra over a few batches (same on every rank: rank-free seed)."""
    vals = []
    probe = FingerprintStream(stream.source, stream.model_ids, stream.bank, P=stream.P, K=stream.K,
                              seed=stable_seed("norm", stream.seed), rank=0)
    with torch.no_grad():
        for s in range(4):
            vals.append(net.transform.raw(probe.batch(s).images.to(device)).flatten().cpu())
    v = torch.cat(vals)
    return float(v.mean()), float(v.std().clamp_min(1e-6))


# ------------------------------------------------------------------------------- training


def train(cfg: TrainConfig, *, resume: bool = False,
          log: Callable[[str], None] = lambda _line: None,
          on_step: Callable[[int, int, str], None] | None = None,
          source: ModelSource | None = None, bank: CropBank | None = None, return_net: bool = False) -> TrainResult | None:
    """Train an extractor per ``cfg``; returns the result on rank 0 (None on other DDP ranks).

    The core never prints: progress goes through callbacks, on rank 0 only: ``log(line)`` for
    messages (silent by default) and ``on_step(done, total, info)`` after every step (the CLI
    draws its bar with it); without ``on_step`` nothing is shown.
    """
    cfg.validate()
    world, rank, local = _dist_info()
    ddp = world > 1
    if ddp and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo"
        dist.init_process_group(backend)
    device = select_device(cfg.device)
    if ddp and device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    is_main = rank == 0
    torch.manual_seed(cfg.seed)

    source = source or build_source(cfg, device)
    bank = bank if bank is not None else photo_bank(cfg)
    train_ids, val_ids, train_bank, val_bank = run_split(cfg, source, bank)
    stream = FingerprintStream(source, train_ids, train_bank, P=cfg.P, K=cfg.K, seed=cfg.seed, rank=rank,
                               augment=cfg.augment())

    dn = None
    if cfg.residual == "denoiser":
        from fpt.extractor.denoiser import load_denoiser

        dn = load_denoiser(cfg.denoiser)
    net = build_net(backbone=cfg.backbone, width=cfg.width, stem=cfg.stem, embedding_dim=cfg.embedding_dim,
                    num_classes=len(train_ids), residual=cfg.residual, grey=cfg.grey, crop_size=cfg.crop_size,
                    denoiser=dn.config() if dn is not None else None)
    if dn is not None:
        net.transform.residual.net.load_state_dict(dn.state_dict())
    net.to(device)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    amp_dtype = None
    if device.type == "cuda" and cfg.amp:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    start, history, wall_before, prior_rate = 0, [], 0.0, None
    spath = state_path_for(cfg.out)
    if resume:
        if not spath.exists():
            raise CheckpointError("nothing to resume from", path=spath, hint="run without --resume first")
        st = load_train_state(spath)
        if st["train_ids"] != train_ids:
            raise CheckpointError("the saved state was trained on a different model split", path=spath,
                                  hint="resume with the same --pool, --seed and hold-out options")
        net.set_normalisation(st["spec_mean"], st["spec_std"])
        net.load_state_dict(st["net"])
        opt.load_state_dict(st["optimizer"])
        start, history, wall_before = int(st["step"]), list(st["history"]), float(st["wall_s"])
        prior_rate = st.get("images_per_s")
        if is_main:
            log(f"resuming from step {start} ({spath})")
    else:
        net.set_normalisation(*_estimate_normalisation(net, stream, device))

    model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None) if ddp else net

    # Held-out architectures on held-out real images; the same crops go through every model.
    val = None
    baseline: dict = {}
    if is_main and val_ids:
        # One crop per held-out real image first (content diversity), then further crops.
        order = sorted(range(len(val_bank)), key=lambda i: (i > 0 and int(val_bank.image_index[i]) == int(val_bank.image_index[i - 1]), i))
        vc = val_bank.get(torch.tensor(order[: cfg.val_images_per_model], dtype=torch.int64))
        val_x, val_y = fingerprinted_set(source, val_ids, vc, seed=cfg.seed)
        val = (val_x, val_y)
        baseline = verification_and_identification(spectrum_baseline_embeddings(val_x), val_y, seed=cfg.seed)
        log(f"train models {len(train_ids)} ({len({i.split('/')[0] for i in train_ids})} archs), held-out "
            f"models {len(val_ids)} ({len({i.split('/')[0] for i in val_ids})} archs) x {vc.shape[0]} images; "
            f"real crops train {len(train_bank)} / val {len(val_bank)}; net {count_parameters(net):,} params")
        log("azimuthal-integral baseline on held-out archs: " + json.dumps({k: round(v, 4) for k, v in baseline.items()}))

    def run_validation(step: int) -> dict:
        if val is None:
            return {"step": step}
        m = verification_and_identification(embed_images(net, val[0], device), val[1], seed=cfg.seed)
        # Same metrics on the pooled backbone features (to choose the inference embedding).
        f = verification_and_identification(embed_images(net, val[0], device, features=True), val[1], seed=cfg.seed)
        m.update({f"feat_{k}": v for k, v in f.items()})
        m["step"] = step
        return m

    def save_state(step: int, wall: float) -> None:
        save_train_state(spath, {"step": step, "net": net.state_dict(), "optimizer": opt.state_dict(),
                                 "history": history, "wall_s": wall,
                                 "train_ids": train_ids, "spec_mean": net.transform.mean,
                                 "spec_std": net.transform.std, "config": _cfg_json(cfg),
                                 "images_per_s": rate_so_far()})

    progress = on_step if is_main else None

    net.train()
    t0 = time.perf_counter()
    seen = 0

    def rate_so_far() -> float | None:
        # a resumed run that trains no further keeps the rate it was measured at
        return round(seen / max(1e-9, time.perf_counter() - t0), 1) if seen else prior_rate

    ema = None
    done = start
    for step in range(start, cfg.steps):
        time_frac = 0.0
        if cfg.max_minutes:
            tf = torch.tensor([(wall_before + time.perf_counter() - t0) / (60.0 * cfg.max_minutes)])
            if ddp:  # every rank must take the same decision
                dist.all_reduce(tf, op=dist.ReduceOp.MAX)
            time_frac = float(tf)
            if time_frac >= 1.0:
                if is_main:
                    log(f"time budget of {cfg.max_minutes} min reached at step {step}: finishing")
                break
        lr_now = cfg.lr * lr_factor(cfg, step, time_frac)
        for group in opt.param_groups:
            group["lr"] = lr_now
        b = stream.batch(step)
        x, y = b.images.to(device, non_blocking=True), b.labels.to(device)
        opt.zero_grad(set_to_none=True)
        with autocast_context(device, enabled=amp_dtype is not None):
            out = model(x)
            parts = combined_loss(out.logits, out.embedding, y, ce_weight=cfg.ce_weight,
                                  triplet_weight=cfg.triplet_weight, margin=cfg.margin)
        scaler.scale(parts.total).backward()
        scaler.unscale_(opt)
        # Clip *after* backward (the authors clipped before it, i.e. not at all).
        torch.nn.utils.clip_grad_norm_(params, cfg.clip)
        scaler.step(opt)
        scaler.update()
        seen += x.shape[0] * world
        loss = float(parts.total.detach())
        ema = loss if ema is None else 0.95 * ema + 0.05 * loss
        done = step + 1
        if progress is not None:
            rate = seen / max(1e-9, time.perf_counter() - t0)
            progress(done, cfg.steps, f"loss {ema:.3f} (ce {parts.ce:.2f} tri {parts.triplet:.3f}) {rate:.0f} img/s")
        if is_main and (done % cfg.val_every == 0 or done == cfg.steps):
            m = run_validation(done)
            m.update(loss=round(ema, 4), lr=lr_now)
            history.append(m)
            msg = " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items())
            log(f"val {msg}")
        if done % cfg.ckpt_every == 0 and done < cfg.steps:
            if is_main:
                save_state(done, wall_before + time.perf_counter() - t0)
            if ddp:
                dist.barrier()
    wall = wall_before + time.perf_counter() - t0
    rate = rate_so_far()

    result = None
    if is_main:
        if done > start and (not history or history[-1].get("step") != done):
            m = run_validation(done)  # stopped early by the time budget: validate what we ship
            m.update(loss=round(ema or 0.0, 4))
            history.append(m)
        save_state(done, wall)
        final = history[-1] if history else {}
        net.eval()
        embed_from = cfg.embed_from
        if embed_from == "auto":
            embed_from = "features" if final.get("feat_auc", -1) > final.get("auc", 0) else "projection"
        shipped = build_net(**dict(net.config, num_classes=0, embed_from=embed_from))
        sd = {k: v for k, v in net.state_dict().items() if not k.startswith("classifier.")}
        if cfg.half:  # fit the whitening on exactly the weights inference will load
            sd = {k: (v.half().float() if v.is_floating_point() else v) for k, v in sd.items()}
        shipped.load_state_dict(sd)
        preprocessing = preprocessing_for(shipped, cfg.windows)
        whitening, whitened = None, {}
        if cfg.whiten_models > 0:
            ex = Extractor(shipped, preprocessing, {}, "", device)
            whitening = fit_checkpoint_whitening(cfg, ex, source, train_ids, train_bank)
            if val_ids:
                whitened = heldout_image_validation(cfg, ex, whitening, source, val_ids, val_bank)
                log("held-out archs, whole images (as users embed them), without / with whitening: "
                    + json.dumps(whitened))
        meta = _cfg_json(cfg)
        meta.update(embedding=embed_from, steps_done=done, train_models=len(train_ids), heldout_archs=sorted({i.split("/")[0] for i in val_ids}),
                    real_images=len(bank.sources), wall_s=round(wall, 1), images_per_s=rate,
                    world_size=world, validation=final, validation_whitening=whitened, baseline=baseline,
                    torch=str(torch.__version__),
                    source=getattr(source, "describe", lambda: {})())
        sha = save_extractor(cfg.out, shipped, preprocessing, meta, half=cfg.half,
                             whitening=whitening)
        result = TrainResult(Path(cfg.out), sha, done, wall, rate or 0.0, history, final, baseline,
                             len(train_ids), len(val_ids), net if return_net else None, embed_from,
                             whitened.get("whitened", {}), whitened.get("plain", {}))
    if ddp:
        dist.barrier()
        dist.destroy_process_group()
    return result


def _photos_of(cfg: TrainConfig, bank: CropBank) -> list[torch.Tensor]:
    """Up to ``whiten_photos`` of ``bank``'s source photos as whole images (centre crops of up to
    ``whiten_size`` px); banks built in memory (tests) have no files, so their crops stand in."""
    from fpt.extractor.whitening import whitening_photos

    used = sorted({int(i) for i in bank.image_index.tolist()})
    paths = [bank.sources[i] for i in used if i < len(bank.sources)]
    photos = whitening_photos(paths, n=cfg.whiten_photos, side=cfg.whiten_size, min_side=cfg.crop_size, seed=cfg.seed)
    if len(photos) < 2:
        photos = list(bank.get(torch.arange(min(len(bank), cfg.whiten_photos))))
    return photos


def heldout_image_validation(cfg: TrainConfig, ex: Extractor, whitening, source: ModelSource, val_ids: list[str],
                             val_bank: CropBank, images_per_model: int = 20) -> dict:
    """Held-out architectures on held-out photos at full size, embedded as ``fpt`` embeds files
    (n x n windows averaged), without and with the whitening: {"plain": {...}, "whitened": {...}}."""
    from fpt.extractor.whitening import training_model_embeddings

    photos = _photos_of(cfg, val_bank)
    emb, labels = training_model_embeddings(ex, source, val_ids, photos, images_per_model=images_per_model,
                                            seed=stable_seed("heldout-images", cfg.seed))
    return {"plain": verification_and_identification(emb, labels, seed=cfg.seed),
            "whitened": verification_and_identification(whitening.apply(emb), labels, seed=cfg.seed),
            "images_per_model": int(min(images_per_model, len(photos))), "photos": len(photos)}


def fit_checkpoint_whitening(cfg: TrainConfig, ex: Extractor, source: ModelSource, train_ids: list[str],
                             train_bank: CropBank):
    """Fit the fingerprint whitening on training models only, over training photos only.

    Photos are the training split's source files, whole (see :func:`_photos_of`), like the images
    users embed.
    """
    from fpt.extractor.whitening import fit_whitening, training_model_embeddings

    photos = _photos_of(cfg, train_bank)
    rng = np.random.default_rng(stable_seed("whiten-models", cfg.seed))
    pick = sorted(rng.choice(len(train_ids), min(cfg.whiten_models, len(train_ids)), replace=False).tolist())
    emb, labels = training_model_embeddings(ex, source, [train_ids[i] for i in pick], photos,
                                            images_per_model=cfg.whiten_images, seed=cfg.seed)
    return fit_whitening(emb, labels, cfg.whiten_shrinkage)


def _cfg_json(cfg: TrainConfig) -> dict:
    d = asdict(cfg)
    return json.loads(json.dumps(d))


@dataclass
class RecordedRun:
    """A finished training run rebuilt from its checkpoint's record: the config, the pool source,
    and the same model split and photo split (so held-out models and photos stay held out)."""

    cfg: TrainConfig
    source: ModelSource
    train_ids: list[str]
    val_ids: list[str]
    train_bank: CropBank
    val_bank: CropBank


def recorded_run(ex: Extractor, *, pool: str | None = None, device: str | torch.device = "cpu") -> RecordedRun:
    """Rebuild ``ex``'s training run from the config stored in its checkpoint (``pool`` overrides
    the recorded pool path). Raises CheckpointError when the rebuilt split of held-out
    architectures is not the recorded one (another pool, or an untrained checkpoint)."""
    from dataclasses import fields

    names = {f.name for f in fields(TrainConfig)}
    rec = {k: v for k, v in ex.config.items() if k in names}
    for key in ("jpeg_quality", "rrc_scale", "blur_sigma"):
        if key in rec:
            rec[key] = tuple(rec[key])
    if pool:
        rec["pool"] = pool
    cfg = TrainConfig(**rec)
    source = build_source(cfg, select_device(device) if isinstance(device, str) else device)
    train_ids, val_ids, train_bank, val_bank = run_split(cfg, source, photo_bank(cfg))
    if sorted({i.split("/")[0] for i in val_ids}) != sorted(ex.config.get("heldout_archs", [])):
        raise CheckpointError("the rebuilt model split is not the one this checkpoint recorded", path=ex.path,
                              hint="pass the pool it was trained on")
    return RecordedRun(cfg, source, train_ids, val_ids, train_bank, val_bank)


def refit_for_windows(ex: Extractor, windows: int, out: str | Path, *, pool: str | None = None,
                      log: Callable[[str], None] = lambda _line: None) -> str:
    """Write ``ex`` with an ``windows`` x ``windows`` inference grid to ``out``, doing what the end of
    ``fpt train --windows N`` does with the same network weights: the whitening is refitted on
    training models embedded with the new grid and the held-out whole-image validation rerun.
    Returns the new file's sha256."""
    from dataclasses import replace

    run = recorded_run(ex, pool=pool)
    cfg = replace(run.cfg, windows=windows)
    exw = Extractor(ex.net, replace(ex.preprocessing, windows=windows), {}, "", ex.device)
    whitening = fit_checkpoint_whitening(cfg, exw, run.source, run.train_ids, run.train_bank)
    whitened = heldout_image_validation(cfg, exw, whitening, run.source, run.val_ids, run.val_bank)
    log("held-out archs, whole images, without / with whitening: " + json.dumps(whitened))
    meta = dict(ex.config, windows=windows, validation_whitening=whitened,
                refit={"from_sha256": ex.sha256, "windows_before": ex.preprocessing.windows,
                       "note": "same network weights; whitening refitted and validation rerun at the new grid"})
    return save_extractor(out, ex.net, exw.preprocessing, meta, half=bool(ex.config.get("half", True)),
                          whitening=whitening)
