"""Safe extractor checkpoints: save, verify, load; and the ready-to-use :class:`Extractor`.

File format (``torch.save`` of plain containers, loadable with ``torch.load(weights_only=True)``,
so no pickled code is ever executed)::

    {"format": "fpt-extractor", "format_version": 1,
     "preprocessing": {...},   # Preprocessing as a dict: what inference must reproduce
     "net": {...},             # FingerprintNet constructor config
     "config": {...},          # training config, seed, data description (JSON-able)
     "state_dict": {name: tensor},   # fp16 or fp32; the learned denoiser travels inside it, and
                                     # the fingerprint whitening as fp32 "whitening.*" tensors
     "digest": "sha256 hex"}   # over the canonical JSON of the above and every tensor's bytes

The embedded digest catches edits of the weights or the config (a tampered file is refused); the
sha256 of the *file* is the extractor's identity, recorded by galleries next to every embedding.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import warnings
import zipfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from fpt.devices import autocast_context, select_device
from fpt.errors import CheckpointError, ConfigError
from fpt.extractor.net import FingerprintNet, build_net
from fpt.extractor.whitening import PREFIX as WHITENING_PREFIX
from fpt.extractor.whitening import Whitening
from fpt.storage import atomic_path, file_sha256

FORMAT = "fpt-extractor"
FORMAT_VERSION = 1
TRAIN_STATE_FORMAT = "fpt-train-state"
DEFAULT_NAME = "extractor.pt"


@dataclass(frozen=True)
class Preprocessing:
    """Everything inference needs to reproduce training's input pipeline exactly."""

    residual: str = "highpass"   # "highpass" | "denoiser" (denoiser weights are inside the checkpoint)
    crop_size: int = 64          # training crop = inference window size, px
    spectrum: str = "logmag"     # log(|DFT(residual)| / sqrt(HW) + eps), unshifted, per channel
    grey: bool = False           # luma spectrum instead of per-channel RGB
    windows: int = 3             # n for the n x n sliding-window grid at inference (paper: 3)
    eps: float = 1e-4            # log offset
    spec_mean: float = 0.0       # normalisation: (logmag - spec_mean) / spec_std
    spec_std: float = 1.0

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def preprocessing_for(net: FingerprintNet, windows: int = 3) -> Preprocessing:
    """The :class:`Preprocessing` implied by a network's config."""
    c = net.config
    return Preprocessing(residual=c["residual"], crop_size=int(c["crop_size"]), grey=bool(c["grey"]),
                         windows=windows, eps=float(c["eps"]), spec_mean=float(c["spec_mean"]),
                         spec_std=float(c["spec_std"]))


def default_extractor_path() -> Path:
    """The shipped default extractor, ``fpt/weights/extractor.pt``."""
    return Path(__file__).resolve().parents[1] / "weights" / DEFAULT_NAME


def _jsonable(obj: object, what: str) -> str:
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what} is not JSON-serialisable: {exc}") from None


def _digest(meta: dict, state_dict: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(_jsonable(meta, "checkpoint metadata").encode())
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_extractor(path: str | Path, net: FingerprintNet, preprocessing: Preprocessing | None = None,
                   config: dict | None = None, *, half: bool = False, whitening: Whitening | None = None) -> str:
    """Write ``net`` (+ preprocessing + training config + whitening) atomically; return the file's sha256.

    ``half`` stores the network's floating tensors as fp16 (shipped weights: half the size, no
    measurable change in embeddings); they are loaded back as fp32.
    """
    preprocessing = preprocessing or preprocessing_for(net)
    if preprocessing.crop_size != net.config["crop_size"] or preprocessing.residual != net.config["residual"]:
        raise ConfigError("preprocessing does not match the network's config (crop size / residual)")
    sd = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    if half:
        sd = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
    if whitening is not None:
        sd.update(whitening.state())
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "preprocessing": asdict(preprocessing),
            "net": net.config, "config": config or {}}
    # JSON round trip: plain dict / list / str / number only (str subclasses such as
    # torch.__version__ would not load under weights_only=True).
    meta = json.loads(_jsonable(meta, "checkpoint metadata"))
    blob = dict(meta, state_dict=sd, digest=_digest(meta, sd))
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)
    return file_sha256(path)


def _read_blob(path: Path, fmt: str) -> dict:
    if not path.exists():
        raise CheckpointError("checkpoint not found", path=path)
    try:
        # weights_only=True: only tensors and plain containers can come back; a pickle carrying
        # code (__reduce__ payloads) is rejected by torch's restricted unpickler, not executed.
        # Its warnings (pickle protocol notes) would precede our one-line error: silenced.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError("refusing to load: the file holds pickled Python objects other than tensors, "
                              "which could run code", path=path,
                              hint="checkpoints must be written by fpt; never load files from untrusted sources") from None
    except Exception as exc:
        with open(path, "rb") as fh:
            zipped = fh.read(4) == b"PK\x03\x04"  # torch.save writes a zip archive
        if zipped and not zipfile.is_zipfile(path):
            raise CheckpointError("checkpoint is truncated or damaged (incomplete archive)", path=path,
                                  hint="copy or download it again") from None
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(f"not a readable fpt checkpoint ({type(exc).__name__}: {first})", path=path,
                              hint="checkpoints must be written by fpt") from None
    if not isinstance(blob, dict) or blob.get("format") != fmt:
        raise CheckpointError(f"not an {fmt} file", path=path)
    return blob


def read_checkpoint(path: str | Path) -> dict:
    """Load and verify an extractor checkpoint (digest, format version); returns the raw dict."""
    path = Path(path)
    blob = _read_blob(path, FORMAT)
    if blob.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint format {blob.get('format_version')} is not supported "
                              f"(this fpt reads {FORMAT_VERSION})", path=path)
    try:
        meta = {k: blob[k] for k in ("format", "format_version", "preprocessing", "net", "config")}
        sd = blob["state_dict"]
        ok = isinstance(sd, dict) and _digest(meta, sd) == blob["digest"]
    except (KeyError, TypeError, AttributeError, ConfigError):
        ok = False
    if not ok:
        raise CheckpointError("checkpoint failed its integrity check (tampered or corrupted)", path=path,
                              hint="re-download or re-train it")
    return blob


class Extractor:
    """A loaded extractor, ready for inference (eval mode, no grad, AMP on CUDA)."""

    def __init__(self, net: FingerprintNet, preprocessing: Preprocessing, config: dict, sha256: str,
                 device: torch.device, path: Path | None = None, whitening: Whitening | None = None) -> None:
        self.net = net.to(device).eval()
        self.whitening = whitening  # applied per image by fpt.extractor.embed
        self.preprocessing = preprocessing
        self.config = config
        self.sha256 = sha256
        self.device = device
        self.path = path
        self.embedding_dim = net.embedding_dim

    @property
    def short_id(self) -> str:
        return self.sha256[:12]

    def embed_crops(self, crops: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """(N, 3, S, S) crops in [0, 1], S = ``preprocessing.crop_size`` -> (N, D) L2-normalised, CPU fp32."""
        s = self.preprocessing.crop_size
        if crops.dim() != 4 or crops.shape[1] != 3 or tuple(crops.shape[-2:]) != (s, s):
            raise ConfigError(f"embed_crops expects (N, 3, {s}, {s}) crops, got {tuple(crops.shape)}",
                              hint="cut windows with fpt.images.sliding_windows(img, preprocessing.crop_size)")
        out = []
        with torch.inference_mode():
            for i in range(0, crops.shape[0], batch_size):
                x = crops[i : i + batch_size].to(self.device, dtype=torch.float32, non_blocking=True)
                spec = self.net.spectrum(x)
                with autocast_context(self.device):
                    emb = self.net.embed_spectrum(spec)
                out.append(torch.nn.functional.normalize(emb.float(), dim=1).cpu())
        if not out:
            return torch.empty(0, self.embedding_dim)
        return torch.cat(out)

    def describe(self) -> dict:
        """Identity, network, preprocessing and training record (``fpt extractor-info --json``)."""
        from dataclasses import asdict

        return {"path": str(self.path), "sha256": self.sha256, "embedding_dim": self.embedding_dim,
                "network": {k: v for k, v in self.net.config.items() if k not in ("spec_mean", "spec_std")},
                "preprocessing": asdict(self.preprocessing), "whitening": self.whitening is not None,
                "training": self.config}

    def __repr__(self) -> str:
        p = self.preprocessing
        return (f"Extractor({self.net.config['backbone']} x{self.net.config['width']}, residual={p.residual}, "
                f"crop={p.crop_size}, D={self.embedding_dim}, whitened={self.whitening is not None}, sha256={self.short_id}, device={self.device})")


def load_extractor(path: str | Path | None = None, device: str | torch.device = "auto") -> Extractor:
    """Load and verify an extractor checkpoint; ``None`` loads the shipped default."""
    path = Path(path) if path is not None else default_extractor_path()
    if not path.exists() and path == default_extractor_path():
        raise CheckpointError("the default extractor is not installed", path=path,
                              hint="reinstall fpt or pass --extractor FILE (train one with `fpt train`)")
    blob = read_checkpoint(path)
    dev = device if isinstance(device, torch.device) else select_device(device)
    try:
        net = build_net(**blob["net"])
        sd = {k: (v.float() if v.is_floating_point() else v) for k, v in blob["state_dict"].items()
              if not k.startswith(WHITENING_PREFIX)}
        net.load_state_dict(sd)
        whitening = Whitening.from_state(blob["state_dict"])
    except (ConfigError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"checkpoint does not fit its own network config: {str(exc)[:200]}", path=path) from None
    pre = Preprocessing.from_dict(blob["preprocessing"])
    return Extractor(net, pre, blob["config"], file_sha256(path), dev, path, whitening)


# ------------------------------------------------------------------ training state (for --resume)


def save_train_state(path: str | Path, state: dict) -> None:
    """Atomically write a resumable training state: tensors / plain containers only."""
    blob = {"format": TRAIN_STATE_FORMAT, **state}
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)


def load_train_state(path: str | Path) -> dict:
    return _read_blob(Path(path), TRAIN_STATE_FORMAT)
