"""Training synthetic models to the papers' targets, fast on a small CPU.

FD models learn to reconstruct real crops; training stops as soon as the reconstruction residual
(mean squared error, in [0, 1] pixel units, measured in eval mode on a fixed held-out batch)
is <= ``target`` (paper 001: 0.005), or at ``max_steps``. Grid generators learn to map noise to
an output whose mean absolute magnitude is ``grid_target`` (paper 000: 0.005); "reached" means
within ``grid_tolerance`` (relative) of it.

Speed levers (see benchmarks/bench_synth.py for the measurements):
- channels-last memory format (1.12x per step at 32 px, 1.22x at 128 px on this CPU);
- one pre-decoded ``CropBank`` tensor shared by every model (no per-model decoding / DataLoader);
- early stop at the target (most architectures need a few hundred steps, not a fixed budget);
- one process per core (``fpt.synth.many.train_many(workers=n)``, fork shares the crop bank copy-on-write);
- on CUDA: AMP through ``fpt.devices.autocast_context``.

Every model is reproducible bit-for-bit on CPU for a given (architecture, seed, config, crop
bank, thread count): the init RNG and the batch-sampling RNG are both derived from
``model_seed(arch_id, seed)``.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fpt.devices import autocast_context
from fpt.errors import ConfigError, EmptyInputError
from fpt.images import find_images, iter_images, LoadFailure, random_crop
from fpt.synth.nets import DEFAULT_KERNEL, DEFAULT_WIDTH, build_model
from fpt.synth.space import ArchSpec, parse_arch_id


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a trained model besides its architecture and seed."""

    size: int = 64                 # crop side (pixels)
    width: int = DEFAULT_WIDTH     # base channel width
    kernel: int = DEFAULT_KERNEL   # conv kernel size
    batch: int = 16
    lr: float = 2e-3
    max_steps: int = 1000
    target: float = 0.005          # FD: reconstruction MSE to reach
    grid_target: float = 0.005     # grid: mean |output| to reach
    grid_tolerance: float = 0.1    # grid: relative tolerance on that magnitude
    check_every: int = 10          # evaluate the stop criterion every n steps
    patience: int = 0              # FD plateau rule: stop after this many held-out checks without a
    plateau_rel: float = 0.02      # ... relative improvement of plateau_rel (0 = off: target or cap only)
    val_batch: int = 32            # held-out crops for the FD stop criterion
    channels_last: bool = True    # measured 1.1-1.2x per step on CPU (bench_synth.py)
    amp: bool = True               # CUDA only

    def __post_init__(self) -> None:
        if self.size < 8 or self.size % 4:
            raise ConfigError(f"crop size must be a multiple of 4 and >= 8, got {self.size}")
        if self.max_steps < 1 or self.batch < 1 or self.width < 1:
            raise ConfigError("max_steps, batch and width must be positive")
        if self.patience < 0 or not 0 <= self.plateau_rel < 1:
            raise ConfigError("patience must be >= 0 and plateau_rel in [0, 1)")


@dataclass
class ModelRecord:
    """The training record of one pooled model."""

    model_id: str
    arch: str
    family: str
    seed: int
    steps: int
    final_loss: float
    wall_s: float
    reached_target: bool
    target: float
    size: int
    width: int
    kernel: int
    device: str = "cpu"
    group: int = 1                 # models trained together in one launch (fpt.synth.many)
    baseline_loss: float = float("nan")  # FD / LD: held-out MSE of a constant output (see learned())
    extra: dict = field(default_factory=dict)

    def to_attrs(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        return d


def model_id(arch: ArchSpec | str, seed: int) -> str:
    return f"{arch if isinstance(arch, str) else arch.id}/s{int(seed):03d}"


def split_model_id(mid: str) -> tuple[ArchSpec, int]:
    try:
        arch, s = mid.rsplit("/", 1)
        if not s.startswith("s"):
            raise ValueError
        return parse_arch_id(arch), int(s[1:])
    except ValueError:
        raise ConfigError(f"not a model id: {mid!r}", hint="expected '<arch id>/s<seed>', e.g. 'grid-D4/s003'") from None


def model_seed(arch_id: str, seed: int) -> int:
    """Stable 31-bit seed per (architecture, seed): different architectures never share RNG draws."""
    return zlib.crc32(f"{arch_id}/{seed}".encode()) & 0x7FFFFFFF


# A model "learned" when its held-out MSE is below this share of a constant output's (each
# channel's mean of the held-out crops). Seen in a latent-decoder pool: without it, the plateau
# rule stopped half the models on their initial flat phase, at or above the constant's MSE —
# untrained nets, not generators. The plateau rule waits for this; pools drop models that miss it.
LEARNED_FRACTION = 0.5


def constant_mse(crops: torch.Tensor) -> float:
    """MSE of the best constant output (the crops' per-channel mean): the loss of learning nothing."""
    c = crops.float()
    return float((c - c.mean(dim=(0, 2, 3), keepdim=True)).square().mean())


def learned(rec: "ModelRecord") -> bool:
    """False for an FD / latent-decoder model that does not beat a constant output by
    ``LEARNED_FRACTION`` (or diverged)."""
    base = rec.baseline_loss
    if not math.isfinite(base):
        return True  # a grid generator, or a pool written before the baseline was recorded
    return math.isfinite(rec.final_loss) and rec.final_loss < LEARNED_FRACTION * base


def at_target(value: float, is_grid: bool, cfg: "TrainConfig", slack: float = 1.0) -> bool:
    """Whether a held-out value meets the stop target (FD / LD: MSE <= target; grid: magnitude
    within the tolerance). ``slack`` > 1 widens it: the cheap training-batch value gates the
    held-out check with slack 1.2 (FD) / 2 (grid)."""
    if is_grid:
        return abs(value - cfg.grid_target) <= slack * cfg.grid_tolerance * cfg.grid_target
    return value <= cfg.target * slack


GATE_SLACK = {False: 1.2, True: 2.0}  # FD / LD, grid


def plateau_update(loss: float, best: float, stale: int, baseline: float, cfg: "TrainConfig") -> tuple[float, int]:
    """One held-out check of the plateau rule: (best so far, checks in a row without a
    ``plateau_rel`` gain). A check counts as stale only once the model has learned (see
    ``LEARNED_FRACTION``): a model still on its initial flat stretch is not on a plateau."""
    if loss < best * (1.0 - cfg.plateau_rel):
        return loss, 0
    if loss < LEARNED_FRACTION * baseline:
        return best, stale + 1
    return best, stale


# ------------------------------------------------------------------------------ crop bank


class CropBank:
    """Pre-decoded random crops (N, 3, S, S) float32 in [0, 1], shared by every model."""

    def __init__(self, crops: torch.Tensor, sources: Sequence[str] = ()):
        if crops.ndim != 4 or crops.shape[1] != 3:
            raise ValueError(f"crops must be (N, 3, S, S), got {tuple(crops.shape)}")
        self.crops = crops.contiguous()
        self.sources = list(sources)

    @property
    def size(self) -> int:
        return int(self.crops.shape[-1])

    def __len__(self) -> int:
        return int(self.crops.shape[0])

    @classmethod
    def from_folder(cls, paths, size: int, n_crops: int = 2048, seed: int = 0,
                    max_images: int | None = None, on_skip: Callable[[str], None] | None = None) -> "CropBank":
        """Decode each image once and cut ``n_crops`` crops spread evenly over the images.

        Memory stays bounded by the crops: images are streamed, never all held at once.

        Images smaller than ``size`` are mirror-padded by ``random_crop``; unreadable files are
        skipped (reported through ``on_skip``). Raises EmptyInputError when nothing is usable.
        """
        files = find_images(paths)
        if max_images:
            files = files[:max_images]
        g = torch.Generator().manual_seed(seed)
        crops, used = [], []
        for i, (path, img) in enumerate(iter_images(files)):
            if isinstance(img, LoadFailure):
                if on_skip:
                    on_skip(img.reason)
                continue
            used.append(str(path))
            # spread what is still missing over the files still to come (skips are made up)
            per = max(1, math.ceil((n_crops - len(crops)) / (len(files) - i)))
            crops.extend(random_crop(img, size, g) for _ in range(per))
        if not crops:
            raise EmptyInputError("none of the images could be read", path=paths if isinstance(paths, (str, Path)) else None)
        stack = torch.stack(crops)
        if len(stack) > n_crops:
            keep = torch.randperm(len(stack), generator=g)[:n_crops]
            stack = stack[keep.sort().values]
        return cls(stack, used)

    def digest(self) -> str:
        """Short content hash, recorded in the pool so resumes and merges use the same data."""
        arr = self.crops[:: max(1, len(self) // 64)].numpy()
        return f"{zlib.crc32(arr.tobytes()) & 0xFFFFFFFF:08x}-{len(self)}x{self.size}"


# ------------------------------------------------------------------------------ training


def train_one(spec: ArchSpec, seed: int, bank: CropBank, cfg: TrainConfig = TrainConfig(),
              device: torch.device | str = "cpu") -> tuple[dict[str, np.ndarray], ModelRecord]:
    """Train one model; returns (state dict as float32 numpy arrays, record)."""
    device = torch.device(device)
    if bank.size != cfg.size:
        raise ConfigError(f"crop bank holds {bank.size}-px crops but the config asks for {cfg.size}")
    t0 = time.perf_counter()
    s = model_seed(spec.id, seed)
    torch.manual_seed(s)  # module init draws from the global RNG
    model = build_model(spec, cfg.width, cfg.kernel).to(device)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    g = torch.Generator().manual_seed(s + 1)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and not torch.cuda.is_bf16_supported())
    crops = bank.crops
    n = len(bank)

    if spec.is_grid:
        def batch_loss() -> torch.Tensor:
            z = torch.randn(model.noise_shape(cfg.batch, cfg.size, cfg.size), generator=g).to(device, memory_format=fmt)
            with autocast_context(device, use_amp):
                mag = model(z).float().abs().mean()
            # relative error: Adam makes the scale irrelevant, the log keeps it symmetric
            return torch.log(mag / cfg.grid_target).square(), mag

        def criterion() -> tuple[float, bool]:
            model.eval()
            with torch.no_grad():
                zg = torch.Generator().manual_seed(s + 2)
                z = torch.randn(model.noise_shape(cfg.val_batch, cfg.size, cfg.size), generator=zg).to(device, memory_format=fmt)
                mag = float(model(z).float().abs().mean())
            model.train()
            return mag, at_target(mag, True, cfg)
        baseline = float("nan")
    else:
        vg = torch.Generator().manual_seed(s + 2)
        val = crops[torch.randint(0, n, (min(cfg.val_batch, n),), generator=vg)].to(device, memory_format=fmt)
        baseline = constant_mse(val)

        def batch_loss() -> torch.Tensor:
            idx = torch.randint(0, n, (cfg.batch,), generator=g)
            x = crops[idx].to(device, non_blocking=True, memory_format=fmt)
            with autocast_context(device, use_amp):
                loss = (model(x).float() - x).square().mean()
            aux = getattr(model, "aux_loss", None)  # VQ latent decoders: codebook + commitment
            return (loss + aux if aux is not None else loss), loss

        def criterion() -> tuple[float, bool]:
            model.eval()
            with torch.no_grad():
                mse = float((model(val).float() - val).square().mean())
            model.train()
            return mse, at_target(mse, False, cfg)

    model.train()
    step, final, reached = 0, float("nan"), False
    # plateau rule (FD / latent decoders): the best held-out loss so far and checks since it improved
    plateau = cfg.patience > 0 and not spec.is_grid
    best, stale = math.inf, 0
    while step < cfg.max_steps:
        opt.zero_grad(set_to_none=True)
        loss, monitored = batch_loss()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        step += 1
        if step % cfg.check_every == 0 or step == cfg.max_steps:
            m = float(monitored.detach())
            # the cheap training-batch value gates the held-out check
            close = at_target(m, spec.is_grid, cfg, GATE_SLACK[spec.is_grid])
            if close or step == cfg.max_steps or plateau:
                final, reached = criterion()
                if reached:
                    break
                if plateau:
                    best, stale = plateau_update(final, best, stale, baseline, cfg)
                    if stale >= cfg.patience:
                        break
    if math.isnan(final):
        final, reached = criterion()
    model.eval()
    state = {k: v.detach().float().cpu().contiguous().numpy() for k, v in model.state_dict().items()}
    return state, training_record(spec, seed, cfg, device, steps=step, loss=final, reached=reached,
                                  wall_s=time.perf_counter() - t0, baseline=baseline)


def training_record(spec: ArchSpec, seed: int, cfg: TrainConfig, device: torch.device | str, *, steps: int,
                    loss: float, reached: bool, wall_s: float, baseline: float, group: int = 1) -> ModelRecord:
    """The pool record of a model trained under ``cfg`` (by ``train_one`` or a group)."""
    return ModelRecord(
        model_id=model_id(spec, seed), arch=spec.id, family=spec.family, seed=int(seed), steps=steps,
        final_loss=float(loss), wall_s=float(wall_s), reached_target=bool(reached),
        target=cfg.grid_target if spec.is_grid else cfg.target, size=cfg.size, width=cfg.width,
        kernel=cfg.kernel, device=str(device), group=group, baseline_loss=baseline,
    )


def load_state(model: nn.Module, state: dict[str, np.ndarray]) -> nn.Module:
    """Load numpy weights (as stored in the pool) into ``model``; strict."""
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, strict=True)
    return model


# ------------------------------------------------------------------------------ many models

Job = tuple[ArchSpec, int]


def plan_jobs(archs: Sequence[ArchSpec], seeds: Sequence[int], grid_archs: Sequence[ArchSpec] = (),
              grid_seeds: Sequence[int] = ()) -> list[Job]:
    """The (architecture, seed) list of a pool, in a fixed order (FD first, then grid)."""
    return [(a, s) for a in archs for s in seeds] + [(a, s) for a in grid_archs for s in grid_seeds]


def parse_shard(text: str | None) -> tuple[int, int]:
    """'i/n' (0-based i) -> (i, n); None -> (0, 1)."""
    if not text:
        return 0, 1
    try:
        i, n = (int(t) for t in text.split("/"))
    except ValueError:
        raise ConfigError(f"bad --shard {text!r}", hint="use i/n with 0 <= i < n, e.g. --shard 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"bad --shard {text!r}", hint="use i/n with 0 <= i < n, e.g. --shard 0/4")
    return i, n


def shard_jobs(jobs: Sequence[Job], i: int, n: int) -> list[Job]:
    """Every n-th job starting at i: disjoint shards, each with a mix of architectures."""
    return list(jobs[i::n])
