"""The fingerprinted-image stream: real crops -> synthetic model -> (augmentation) -> P x K batches.

Every batch holds P synthetic models x K images each, so every anchor of the triplet loss has
K-1 positives (the authors drew 200 models x 1 image: most anchors had none). The residual and
the spectrum are *not* computed here: they belong to the network (``FingerprintNet.spectrum``),
so training and inference share one definition.

Sources of synthetic models implement :class:`ModelSource`; :class:`PoolSource` adapts H2's HDF5
pool (``fpt.synth.pool.Pool``) and :class:`ToySource` makes tiny random-filter "generators" for
tests and smoke runs.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fpt.errors import ConfigError, EmptyInputError, InputError


def arch_of(model_id: str) -> str:
    """Architecture id of a pool model id (``"K2-L1-post-deconv-relu-bn/s003"`` -> the part before /)."""
    return model_id.split("/", 1)[0]


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from any values, stable across processes and Python runs (unlike hash())."""
    h = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


# ------------------------------------------------------------------------- model sources


class ModelSource(Protocol):
    model_ids: list[str]

    def apply(self, model_id: str, crops: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Fingerprint real crops (N, 3, S, S) in [0, 1] with one model -> same shape in [0, 1]."""


class PoolSource:
    """A synthetic-model pool file (H2's ``fpt.synth.pool.Pool``) as a :class:`ModelSource`.

    Models are loaded once and kept (synthetic models are tiny); ``only_reached`` drops models
    that did not reach their training target (their "fingerprint" would be an untrained net's);
    ``only_learned`` drops only those that never beat a constant output (``fpt.synth.train.learned``);
    ``models`` keeps only ids matching comma-separated fnmatch patterns.
    """

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", only_reached: bool = False,
                 models: str | None = None, only_learned: bool = False) -> None:
        from fpt.synth.pool import Pool

        self.path = Path(path)
        self.pool = Pool.open(self.path)
        self.device = torch.device(device)
        ids = list(self.pool.model_ids)
        if models:
            # Sub-pools for ablations (paper 000 Table 3: FD-only vs grid-only vs combined).
            patterns = [p.strip() for p in models.split(",") if p.strip()]
            ids = [mid for mid in ids if any(fnmatch.fnmatchcase(mid, p) for p in patterns)]
            if len(ids) < 2:
                raise ConfigError(f"--models '{models}' keeps {len(ids)} pool model(s); training needs 2+",
                                  path=self.path, hint="patterns match model ids such as 'K2-*' or 'grid-*'")
        self.unlearned = 0
        if only_learned:
            # a model that never beat a constant output is an untrained net, not a generator
            from fpt.synth.train import learned

            kept = [mid for mid in ids if learned(self.pool.record(mid))]
            self.unlearned = len(ids) - len(kept)
            if len(kept) < 2:
                raise ConfigError(f"only {len(kept)} of {len(ids)} pool models learned to reconstruct their images",
                                  path=self.path, hint="rebuild the pool with a lower --lr or more --max-steps")
            ids = kept
        if only_reached:
            kept = []
            for mid in ids:
                reached = getattr(self.pool.record(mid), "reached_target", None)
                if reached is None or bool(reached):
                    kept.append(mid)
            if len(kept) < 2:
                raise ConfigError(f"only {len(kept)} of {len(ids)} pool models reached their training target",
                                  path=self.path, hint="train the pool longer (--max-steps) or drop --only-reached")
            ids = kept
        self.model_ids = ids
        self._models: dict[str, nn.Module] = {}

    def _model(self, mid: str) -> nn.Module:
        m = self._models.get(mid)
        if m is None:
            m = self.pool.load(mid, self.device)
            m.eval()
            self._models[mid] = m
        return m

    def apply(self, model_id: str, crops: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        from fpt.synth.pool import fingerprint

        family = "grid" if arch_of(model_id).startswith("grid") else "fd"
        return fingerprint(self._model(model_id), family, crops.to(self.device), generator)

    def describe(self) -> dict:
        return {"pool": str(self.path), "models": len(self.model_ids), "unlearned_dropped": self.unlearned}


class MultiSource:
    """Several model sources (e.g. pool shards built separately) as one; ids stay unique."""

    def __init__(self, sources: Sequence[ModelSource]) -> None:
        self.sources = list(sources)
        self.model_ids: list[str] = []
        self._route: dict[str, tuple[ModelSource, str]] = {}
        for src in self.sources:
            for mid in src.model_ids:
                uid, k = mid, 1
                while uid in self._route:  # same id in two pools: different models, keep both
                    k += 1
                    uid = f"{mid}#{k}"
                self._route[uid] = (src, mid)
                self.model_ids.append(uid)

    def apply(self, model_id: str, crops: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        src, mid = self._route[model_id]
        return src.apply(mid, crops, generator)

    def describe(self) -> dict:
        return {"sources": [getattr(s, "describe", lambda: {})() for s in self.sources], "models": len(self.model_ids)}


class _ToyModel(nn.Module):
    """A fixed random "generator": crops + a small spectrally-coloured artifact.

    Architecture ``a`` (of ``n_archs``) fixes the upsampling period and the filter family; the
    seed fixes the filter weights. Like a real generator, every image it makes carries the same
    high-frequency pattern multiplied into / added to its content.
    """

    def __init__(self, arch: int, seed: int, strength: float = 0.02) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(stable_seed("toy", arch, seed))
        self.period = 2 + arch % 3
        self.kernel = torch.randn(3, 1, 3, 3, generator=g) * 0.5 + (arch % 2)
        self.pattern = torch.randn(3, self.period, self.period, generator=g)
        self.strength = strength

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        pat = self.pattern.repeat(1, math.ceil(h / self.period), math.ceil(w / self.period))[:, :h, :w]
        hp = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.kernel, groups=3)
        return (x + self.strength * (pat + 0.1 * hp)).clamp(0, 1)


class ToySource:
    """``n_archs`` x ``seeds`` toy models with ids like ``toy-a2/s001`` (tests, smoke runs)."""

    def __init__(self, n_archs: int = 4, seeds: int = 1, strength: float = 0.02) -> None:
        self.model_ids = [f"toy-a{a}/s{s:03d}" for a in range(n_archs) for s in range(seeds)]
        self._models = {mid: _ToyModel(a, s, strength) for mid, (a, s) in
                        zip(self.model_ids, [(a, s) for a in range(n_archs) for s in range(seeds)])}

    def apply(self, model_id: str, crops: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        with torch.no_grad():
            return self._models[model_id](crops)

    def describe(self) -> dict:
        return {"toy_models": len(self.model_ids)}


def split_models(model_ids: Sequence[str], *, holdout_frac: float = 0.15, holdout_pattern: str | None = None,
                 seed: int = 0) -> tuple[list[str], list[str]]:
    """Split model ids into (train, held-out) by *architecture*, never by seed.

    ``holdout_pattern`` (fnmatch on architecture ids, e.g. ``"K1-*-deconv-*"``) picks the
    held-out architectures explicitly; otherwise a seeded ``holdout_frac`` of the non-grid
    architectures is held out (grid generators have only 3 architectures: all stay in training).
    """
    archs = sorted({arch_of(m) for m in model_ids})
    if holdout_pattern:
        held = {a for a in archs if fnmatch.fnmatchcase(a, holdout_pattern)}
        if not held:
            raise ConfigError(f"hold-out pattern '{holdout_pattern}' matches no architecture in the pool")
    else:
        cand = [a for a in archs if not a.startswith("grid")] or archs
        # The paper's 288 and extension architectures (K = 3) are held out separately, so adding
        # an extension to a pool leaves the held-out paper architectures (and their numbers) as
        # they were.
        paper = [a for a in cand if not _is_extension(a)]
        extension = [a for a in cand if _is_extension(a)]
        held = _seeded_fraction(paper, holdout_frac, np.random.default_rng(seed))
        held |= _seeded_fraction(extension, holdout_frac, np.random.default_rng([seed, 1]))
    train = [m for m in model_ids if arch_of(m) not in held]
    val = [m for m in model_ids if arch_of(m) in held]
    if len({arch_of(m) for m in train}) < 2:
        raise ConfigError("fewer than 2 training architectures left after the hold-out",
                          hint="lower --holdout-frac or use a bigger pool")
    return train, val


def _is_extension(arch: str) -> bool:
    from fpt.synth.space import is_paper_space, parse_arch_id

    try:
        spec = parse_arch_id(arch)
    except ConfigError:  # toy / foreign ids: treated like the paper's space
        return False
    return not spec.is_grid and not is_paper_space(spec)


def _seeded_fraction(archs: list[str], frac: float, rng: np.random.Generator) -> set[str]:
    n = int(round(frac * len(archs)))
    if frac > 0 and archs:
        n = max(n, 2) if len(archs) >= 4 else n
    return set(rng.permutation(archs)[:n].tolist()) if n else set()


# ------------------------------------------------------------------------- real crops


@dataclass
class CropBank:
    """Pre-decoded real crops (uint8, N x 3 x S x S) with the image each came from.

    Unlike :class:`fpt.synth.train.CropBank` (float crops for fitting synthetic models, small
    images mirror-padded), this one keeps the source image of every crop, so validation can hold
    out whole images, and skips images smaller than the crop.
    """

    crops: torch.Tensor            # uint8 (N, 3, S, S)
    image_index: torch.Tensor      # int64 (N,) index into ``sources``
    sources: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return int(self.crops.shape[-1])

    def __len__(self) -> int:
        return int(self.crops.shape[0])

    def get(self, idx: torch.Tensor) -> torch.Tensor:
        return self.crops[idx].float().div_(255.0)

    def subset_images(self, image_ids: set[int]) -> "CropBank":
        keep = torch.tensor([int(i) in image_ids for i in self.image_index.tolist()], dtype=torch.bool)
        return CropBank(self.crops[keep], self.image_index[keep], self.sources)

    @classmethod
    def from_folders(cls, paths: Sequence[str | Path] | str | Path, size: int, *, crops_per_image: int = 4,
                     max_images: int | None = None, seed: int = 0, progress=None) -> "CropBank":
        """Random ``size`` crops from every image at least ``size`` px on both sides.

        Smaller images (e.g. 28 px MNIST) are skipped rather than mirror-padded: padding would
        stamp an artificial periodic pattern on exactly the frequencies the extractor studies.
        """
        from fpt.images import find_images, load_image, random_crop

        files = find_images(paths)
        rng = np.random.default_rng(seed)
        if max_images and len(files) > max_images:
            files = [files[i] for i in sorted(rng.choice(len(files), max_images, replace=False))]
        g = torch.Generator().manual_seed(seed)
        out, idx, sources = [], [], []
        for i, f in enumerate(files):
            if progress is not None:
                progress(i + 1, len(files))
            try:
                img = load_image(f)
            except InputError:
                continue
            h, w = img.shape[-2:]
            if h < size or w < size:
                continue
            k = len(sources)
            sources.append(str(f))
            for _ in range(crops_per_image):
                out.append((random_crop(img, size, g) * 255.0).round().to(torch.uint8))
                idx.append(k)
        if not out:
            raise EmptyInputError(f"no real image is at least {size} x {size} px", path=paths if isinstance(paths, (str, Path)) else None,
                                  hint="use a folder of photos larger than the crop size")
        return cls(torch.stack(out), torch.tensor(idx, dtype=torch.int64), sources)

    def split(self, val_frac: float, seed: int = 0) -> tuple["CropBank", "CropBank"]:
        """Split by *source image* (no image contributes crops to both sides)."""
        n_img = int(self.image_index.max()) + 1 if len(self) else 0
        perm = np.random.default_rng(seed).permutation(n_img)
        n_val = max(1, int(round(val_frac * n_img))) if val_frac > 0 else 0
        val_ids = set(perm[:n_val].tolist())
        return self.subset_images(set(range(n_img)) - val_ids), self.subset_images(val_ids)


# ------------------------------------------------------------------------- augmentation


@dataclass(frozen=True)
class Augment:
    """Post-generation perturbations (paper 001 §V robustness), each with a probability."""

    jpeg_p: float = 0.0
    jpeg_quality: tuple[int, int] = (70, 100)
    rrc_p: float = 0.0                    # random resized crop: crop a fraction, resize back
    rrc_scale: tuple[float, float] = (0.6, 1.0)
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 1.0)

    @property
    def active(self) -> bool:
        return self.jpeg_p > 0 or self.rrc_p > 0 or self.blur_p > 0

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if not self.active:
            return x
        out = []
        for img in x:
            if self.rrc_p > 0 and float(torch.rand((), generator=g)) < self.rrc_p:
                img = _random_resized_crop(img, self.rrc_scale, g)
            if self.blur_p > 0 and float(torch.rand((), generator=g)) < self.blur_p:
                img = _blur(img, _uniform(self.blur_sigma, g))
            if self.jpeg_p > 0 and float(torch.rand((), generator=g)) < self.jpeg_p:
                q = int(torch.randint(self.jpeg_quality[0], self.jpeg_quality[1] + 1, (1,), generator=g))
                img = jpeg(img, q)
            out.append(img)
        return torch.stack(out)


def _uniform(r: tuple[float, float], g: torch.Generator) -> float:
    return r[0] + (r[1] - r[0]) * float(torch.rand((), generator=g))


def _random_resized_crop(img: torch.Tensor, scale: tuple[float, float], g: torch.Generator) -> torch.Tensor:
    s = img.shape[-1]
    side = max(8, int(round(s * math.sqrt(_uniform(scale, g)))))
    t = int(torch.randint(0, s - side + 1, (1,), generator=g))
    l = int(torch.randint(0, s - side + 1, (1,), generator=g))
    crop = img[:, t : t + side, l : l + side][None]
    return F.interpolate(crop, size=(s, s), mode="bilinear", align_corners=False, antialias=True)[0].clamp(0, 1)


def _blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, int(math.ceil(2 * sigma)))
    xs = torch.arange(-r, r + 1, dtype=img.dtype)
    k = torch.exp(-0.5 * (xs / sigma) ** 2)
    k = k / k.sum()
    x = F.pad(img[None], (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    x = F.conv2d(x, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
    return x[0]


def jpeg(img: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG round trip of one (3, H, W) [0, 1] image through Pillow (4:2:0, as most encoders)."""
    from PIL import Image

    arr = (img.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy())
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    back = np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(back).permute(2, 0, 1).contiguous()


# ------------------------------------------------------------------------- the stream


@dataclass
class Batch:
    images: torch.Tensor      # (P*K, 3, S, S) fingerprinted (and augmented) crops in [0, 1]
    labels: torch.Tensor      # (P*K,) int64 index into the stream's ``model_ids``
    model_ids: list[str]      # the P models of this batch, in label order of appearance


class FingerprintStream:
    """Deterministic P x K batches: batch ``step`` of rank ``rank`` depends only on (seed, rank, step).

    That makes ``--resume`` exact without saving generator state, and gives every DDP rank its
    own, non-overlapping draw.
    """

    def __init__(self, source: ModelSource, model_ids: Sequence[str], bank: CropBank, *, P: int, K: int,
                 seed: int = 0, rank: int = 0, augment: Augment = Augment()) -> None:
        if K < 2:
            raise ConfigError("K (images per model) must be >= 2 so every anchor has a positive")
        if P < 2:
            raise ConfigError("P (models per batch) must be >= 2 so every anchor has a negative")
        if len(model_ids) < P:
            raise ConfigError(f"batch needs P={P} models but only {len(model_ids)} are available for training",
                              hint="lower --P or use a bigger pool")
        if len(bank) < 1:
            raise EmptyInputError("no real crops to fingerprint")
        self.source, self.model_ids, self.bank = source, list(model_ids), bank
        self.P, self.K, self.seed, self.rank, self.augment = P, K, seed, rank, augment

    @property
    def batch_size(self) -> int:
        return self.P * self.K

    def batch(self, step: int) -> Batch:
        g = torch.Generator().manual_seed(stable_seed("batch", self.seed, self.rank, step))
        models = torch.randperm(len(self.model_ids), generator=g)[: self.P]
        imgs, labels, ids = [], [], []
        for m in models.tolist():
            mid = self.model_ids[m]
            crops = self.bank.get(torch.randint(0, len(self.bank), (self.K,), generator=g))
            # Random flips / 90-degree turns of the *real* crop change content, not the model.
            if float(torch.rand((), generator=g)) < 0.5:
                crops = crops.flip(-1)
            out = self.source.apply(mid, crops, g).cpu()
            imgs.append(self.augment(out, g))
            labels += [m] * self.K
            ids.append(mid)
        return Batch(torch.cat(imgs), torch.tensor(labels, dtype=torch.int64), ids)


def fingerprinted_set(source: ModelSource, model_ids: Sequence[str], crops: torch.Tensor, seed: int = 0
                      ) -> tuple[torch.Tensor, np.ndarray]:
    """The same real crops through every model: ((M*N, 3, S, S), labels (M*N,) of model ids).

    Same content for every model, so any separation measured on this set is fingerprint, not
    content (the held-out-architecture validation set).
    """
    out, labels = [], []
    for i, mid in enumerate(model_ids):
        g = torch.Generator().manual_seed(stable_seed("val", seed, mid))
        out.append(source.apply(mid, crops, g).cpu())
        labels += [mid] * crops.shape[0]
    return torch.cat(out), np.asarray(labels, dtype=object)
