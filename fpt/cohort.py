"""The cohort store: fingerprints of models that are neither enrolled nor trained on, and the
likelihood-ratio calibration fitted on them (see :mod:`fpt.calibration` for the maths).

Layout (``fpt_kind = "cohort"``, ``fpt_schema = 1``)::

    /            attrs: extractor_sha256, embedding_dim, created, source (JSON: how it was built),
                        calibration (JSON: fpt.calibration.CalibrationSet.to_dict(); absent if none)
    names        (C,) str: cohort model names (pool model ids or folder names)
    embeddings   (n, D) float32: unit embeddings of every cohort image
    labels       (n,) int32: index into ``names``

A cohort belongs to one extractor: embeddings of another extractor live in another space, so
loading it for a different checkpoint is refused (:class:`ExtractorMismatchError`, exit 4). The
shipped extractor's cohort sits beside it as ``<checkpoint stem>.cohort.h5``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from fpt.calibration import DEFAULT_TOP_N, CalibrationSet, fit_cohort_calibration
from fpt.errors import ExtractorMismatchError, InputError, StoreError
from fpt.storage import atomic_path, init_store, open_store

KIND = "cohort"
SCHEMA = 1
#: images per cohort model: the (10, 10) verification calibration needs 20 disjoint ones
DEFAULT_IMAGES_PER_MODEL = 24
#: side of the real crops pool models are applied to: several extractor windows per image
DEFAULT_POOL_IMAGE_SIZE = 128


@dataclass
class Cohort:
    extractor_sha256: str
    names: list[str]
    embeddings: np.ndarray  # (n, D) float32
    labels: np.ndarray  # (n,) int
    calibration: CalibrationSet | None = None
    source: dict = field(default_factory=dict)
    created: str = ""
    path: Path | None = None

    @property
    def size(self) -> int:
        return len(self.names)

    def fingerprints(self) -> np.ndarray:
        """(C, D) normalised mean embedding of each cohort model."""
        e = self.embeddings / np.maximum(np.linalg.norm(self.embeddings, axis=1, keepdims=True), 1e-12)
        fp = np.stack([e[self.labels == i].mean(axis=0) for i in range(len(self.names))])
        return (fp / np.maximum(np.linalg.norm(fp, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def check_extractor(self, sha: str) -> None:
        if sha != self.extractor_sha256:
            raise ExtractorMismatchError(
                f"cohort was built with extractor {self.extractor_sha256[:12]}, not {sha[:12]}",
                path=self.path,
                hint="rebuild it for this extractor: fpt cohort build --pool POOL --images PHOTOS --extractor CKPT "
                     "(see docs/calibration.md)")


def cohort_path_for(extractor_path: str | Path) -> Path:
    """Where an extractor's cohort lives: ``extractor.pt`` -> ``extractor.cohort.h5`` beside it."""
    p = Path(extractor_path)
    return p.with_name(p.stem + ".cohort.h5")


def save_cohort(c: Cohort, path: str | Path) -> Path:
    """Write ``c`` atomically (a crash leaves the previous file, if any, intact)."""
    from fpt.gallery import now_iso

    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            init_store(f, KIND, SCHEMA)
            f.attrs["extractor_sha256"] = c.extractor_sha256
            f.attrs["embedding_dim"] = int(c.embeddings.shape[1])
            f.attrs["created"] = c.created or now_iso()
            f.attrs["source"] = json.dumps(c.source, sort_keys=True)
            if c.calibration is not None:
                f.attrs["calibration"] = json.dumps(c.calibration.to_dict(), sort_keys=True)
            f.create_dataset("names", data=np.array(c.names, dtype=object), dtype=h5py.string_dtype())
            f.create_dataset("embeddings", data=np.asarray(c.embeddings, np.float32))
            f.create_dataset("labels", data=np.asarray(c.labels, np.int32))
    c.path = path
    return path


def load_cohort(path: str | Path, extractor_sha256: str | None = None) -> Cohort:
    """Read a cohort; with ``extractor_sha256``, refuse one built with another extractor."""
    path = Path(path)
    with open_store(path, KIND, SCHEMA, "r") as f:
        try:
            def s(v) -> str:
                return v.decode() if isinstance(v, bytes) else str(v)

            cal = f.attrs.get("calibration")
            c = Cohort(
                extractor_sha256=s(f.attrs["extractor_sha256"]),
                names=[s(n) for n in f["names"][()]],
                embeddings=np.asarray(f["embeddings"][()], np.float32),
                labels=np.asarray(f["labels"][()], np.int64),
                calibration=CalibrationSet.from_dict(json.loads(s(cal))) if cal is not None else None,
                source=json.loads(s(f.attrs.get("source", "{}"))),
                created=s(f.attrs.get("created", "")),
                path=path,
            )
        except (KeyError, ValueError, TypeError, OSError) as exc:
            raise StoreError(f"cohort file is damaged ({type(exc).__name__}: {exc})", path=path,
                             hint="rebuild it: see docs/calibration.md") from exc
    if c.embeddings.ndim != 2 or c.labels.shape != (c.embeddings.shape[0],) or (
            c.labels.size and (c.labels.min() < 0 or c.labels.max() >= len(c.names))):
        raise StoreError("cohort file is inconsistent (labels do not match names / embeddings)", path=path)
    if extractor_sha256 is not None:
        c.check_extractor(extractor_sha256)
    return c


def find_cohort(extractor_sha256: str, extractor_path: str | Path | None, explicit: str | Path | None = None
                ) -> Cohort | None:
    """The cohort to use: ``explicit`` (must exist and match), else the one beside the checkpoint, else None."""
    if explicit is not None:
        p = Path(explicit)
        if not p.exists():
            raise InputError("no such cohort file", path=p, hint="build one: fpt cohort build (see docs/calibration.md)")
        return load_cohort(p, extractor_sha256)
    if extractor_path is None:
        return None
    p = cohort_path_for(extractor_path)
    return load_cohort(p, extractor_sha256) if p.exists() else None


def make_cohort(names: Sequence[str], embeddings: np.ndarray, labels: np.ndarray, extractor_sha256: str,
                source: dict, *, top_n: int = DEFAULT_TOP_N, method: str = "logistic", seed: int = 0) -> Cohort:
    """A cohort with its LR calibration fitted on its own trials (each model against the others)."""
    from fpt.gallery import now_iso

    names = list(names)
    if len(names) < 3:
        raise InputError(f"a cohort needs 3+ models, got {len(names)}",
                         hint="more pool models or more model folders (dozens or more give stable statistics)")
    emb = np.asarray(embeddings, np.float32)
    lab = np.asarray(labels, np.int64)
    try:
        cal = fit_cohort_calibration(emb, lab, top_n=top_n, method=method, seed=seed)
    except ValueError as exc:
        raise InputError(f"cannot calibrate the cohort: {exc}", hint="give each cohort model more images") from None
    return Cohort(extractor_sha256, names, emb, lab, cal, dict(source), now_iso())


# ---------------------------------------------------------------- building the embeddings


def pool_cohort_embeddings(ex, pool: str | Path, images: Sequence[str | Path], *,
                           per_model: int = DEFAULT_IMAGES_PER_MODEL, size: int = DEFAULT_POOL_IMAGE_SIZE,
                           models: str | None = None, seed: int = 0,
                           progress: Callable[[int, int], None] | None = None
                           ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Every pool model applied to ``per_model`` real crops of ``size`` px, embedded by ``ex``.

    Each model gets its own crops (seeded by its id), so content does not tie cohort models
    together. Returns ``(names, embeddings (n, D), labels (n,))``.
    """
    import torch

    from fpt.extractor.data import PoolSource, stable_seed
    from fpt.extractor.embed import embed_tensors
    from fpt.synth.train import CropBank

    src = PoolSource(pool, models=models)
    bank = CropBank.from_folder(list(images), size, n_crops=max(4 * per_model, 256), seed=seed)
    names, embs, labels = [], [], []
    for i, mid in enumerate(src.model_ids):
        g = torch.Generator().manual_seed(stable_seed("cohort", seed, mid))
        idx = torch.randperm(bank.crops.shape[0], generator=g)[:per_model]
        out = src.apply(mid, bank.crops[idx], g)
        e, _ = embed_tensors(ex, list(out))
        names.append(mid)
        embs.append(e)
        labels += [i] * e.shape[0]
        if progress is not None:
            progress(i + 1, len(src.model_ids))
    return names, np.concatenate(embs), np.asarray(labels, np.int64)


def folder_cohort_embeddings(ex, root: str | Path, *, per_model: int | None = None, seed: int = 0,
                             progress: Callable[[int, int], None] | None = None,
                             on_skip: Callable[[str], None] | None = None
                             ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``root/<model>/...`` folders of images (any depth below each model folder) embedded by ``ex``."""
    from fpt.extractor.embed import EmbedFailure, iter_embeddings
    from fpt.images import IMAGE_EXTENSIONS

    root = Path(root)
    if not root.is_dir():
        raise InputError("not a folder", path=root, hint="fpt cohort build --images DIR expects DIR/<model>/<images>")
    dirs = sorted(d for d in root.iterdir() if d.is_dir())
    plan = []
    rng = np.random.default_rng(seed)
    for d in dirs:
        files = sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if per_model and len(files) > per_model:
            files = [files[i] for i in sorted(rng.choice(len(files), per_model, replace=False))]
        if files:
            plan.append((d.name, files))
    total = sum(len(f) for _, f in plan)
    done = 0
    names, embs, labels = [], [], []
    for name, files in plan:
        got = []
        for r in iter_embeddings(ex, files):
            done += 1
            if progress is not None:
                progress(done, total)
            if isinstance(r, EmbedFailure):
                if on_skip is not None:
                    on_skip(f"{r.path}: {r.reason}")
                continue
            got.append(r.embedding)
        if got:
            labels += [len(names)] * len(got)
            names.append(name)
            embs.append(np.stack(got))
    if not names:
        raise InputError("no model folders with readable images", path=root,
                         hint="fpt cohort build --images DIR expects DIR/<model>/<images>")
    return names, np.concatenate(embs), np.asarray(labels, np.int64)


__all__ = ["KIND", "SCHEMA", "Cohort", "cohort_path_for", "save_cohort", "load_cohort", "find_cohort", "make_cohort",
           "pool_cohort_embeddings", "folder_cohort_embeddings"]
