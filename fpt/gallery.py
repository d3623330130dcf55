"""The gallery: one HDF5 file of enrolled models, their per-image embeddings and fingerprints.

Layout (``fpt_kind = "gallery"``, ``fpt_schema = 1``)::

    /                attrs: extractor_sha256, embedding_dim, created, updated,
                            calibration (JSON: far, threshold, expected rates; absent if none)
    /models/<key>    attrs: name, created, updated, meta (JSON object of --meta key=value)
        embeddings       (n, D) float32, unit rows, one per enrolled image
        fingerprint      (D,) float32: the normalised mean of ``embeddings``
        paths            (n,) str: source path as given at enrolment
        sha256           (n,) str: file hash; re-enrolling the same bytes is a no-op
        enrolled         (n,) str: ISO-8601 UTC time of enrolment
        low_confidence   (n,) bool: image was smaller than a window (mirror-padded)

Group keys are ``m0000, m0001, ...`` so model names may hold any character (slashes included).

Every write re-reads the gallery under an exclusive file lock (:func:`fpt.storage.store_lock`),
applies the change and writes a complete new file that atomically replaces the old one
(:func:`fpt.storage.atomic_path`). So two concurrent ``fpt enroll`` runs both land, and a crash or
Ctrl-C leaves the previous gallery intact. The slow part (embedding images) happens before the
lock is taken.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from fpt.errors import ExtractorMismatchError, InputError, StoreError
from fpt.metrics.verification import l2_normalise
from fpt.storage import atomic_path, check_writable, init_store, open_store, real_path, store_lock

KIND = "gallery"
SCHEMA = 1
DEFAULT_FAR = 0.05


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def default_gallery_path() -> Path:
    """``$FPT_GALLERY``, else ``$XDG_DATA_HOME/fpt/gallery.h5`` (``~/.local/share`` by default)."""
    env = os.environ.get("FPT_GALLERY")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / "fpt" / "gallery.h5"


def gallery_path(path: str | Path | None = None) -> Path:
    """``path``, or :func:`default_gallery_path` when None."""
    return Path(path) if path is not None else default_gallery_path()


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


@dataclass
class ModelEntry:
    name: str
    embeddings: np.ndarray  # (n, D) float32
    paths: list[str] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    dates: list[str] = field(default_factory=list)
    low_confidence: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    meta: dict[str, str] = field(default_factory=dict)
    created: str = ""
    updated: str = ""

    @property
    def count(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def fingerprint(self) -> np.ndarray:
        return _unit(_unit(self.embeddings).mean(axis=0))


@dataclass
class Calibration:
    """Open-set identification threshold chosen at a false-accept rate on the gallery's own images."""

    far: float
    threshold: float
    expected_far: float  # measured on the leave-one-out impostor scores
    expected_frr: float  # genuine (leave-one-out own model) scores below threshold
    loo_accuracy: float  # leave-one-out top-1 over the gallery's images
    n_genuine: int
    n_impostor: int
    date: str
    models: int


@dataclass
class Gallery:
    path: Path
    extractor_sha256: str | None = None
    embedding_dim: int | None = None
    models: dict[str, ModelEntry] = field(default_factory=dict)
    calibration: Calibration | None = None
    created: str = ""
    updated: str = ""

    def names(self) -> list[str]:
        return sorted(self.models)

    def get(self, name: str) -> ModelEntry:
        try:
            return self.models[name]
        except KeyError:
            raise InputError(f"no model named '{name}' in the gallery", path=self.path,
                             hint=f"enrolled: {', '.join(self.names()) or 'none'}") from None

    def fingerprint_matrix(self) -> tuple[list[str], np.ndarray]:
        names = self.names()
        if not names:
            return [], np.zeros((0, self.embedding_dim or 0), np.float32)
        return names, np.stack([self.models[n].fingerprint for n in names])

    def check_extractor(self, sha: str) -> None:
        """Raise :class:`ExtractorMismatchError` unless ``sha`` made this gallery's embeddings."""
        if self.extractor_sha256 and self.models and sha != self.extractor_sha256:
            raise ExtractorMismatchError(
                f"gallery was built with extractor {self.extractor_sha256[:12]}, not {sha[:12]}",
                path=self.path,
                hint="use the same --extractor, or re-enroll every model into a new gallery "
                     "(fpt gallery export keeps the source paths: re-run fpt enroll on them with --gallery NEW.h5)",
            )


# ---------------------------------------------------------------- read / write


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def load_gallery(path: str | Path) -> Gallery:
    """Read a gallery file (StoreError for missing, non-HDF5, non-gallery or wrong-schema files)."""
    path = Path(path)
    if not path.exists():
        raise StoreError("no such gallery file", path=path,
                         hint="enroll a model first (fpt enroll MODEL IMAGES...), or pass --gallery FILE / set FPT_GALLERY")
    with open_store(path, KIND, SCHEMA, "r") as f:
        try:
            g = Gallery(path=path,
                        extractor_sha256=_s(f.attrs["extractor_sha256"]) or None,
                        embedding_dim=int(f.attrs["embedding_dim"]) or None,
                        created=_s(f.attrs.get("created", "")), updated=_s(f.attrs.get("updated", "")))
            cal = f.attrs.get("calibration")
            if cal is not None and _s(cal):
                g.calibration = Calibration(**json.loads(_s(cal)))
            for key in sorted(f.get("models", {})):
                grp = f["models"][key]
                name = _s(grp.attrs["name"])
                g.models[name] = ModelEntry(
                    name=name,
                    embeddings=np.asarray(grp["embeddings"][()], np.float32),
                    paths=[_s(p) for p in grp["paths"][()]],
                    hashes=[_s(p) for p in grp["sha256"][()]],
                    dates=[_s(p) for p in grp["enrolled"][()]],
                    low_confidence=np.asarray(grp["low_confidence"][()], bool),
                    meta=json.loads(_s(grp.attrs.get("meta", "{}"))),
                    created=_s(grp.attrs.get("created", "")), updated=_s(grp.attrs.get("updated", "")),
                )
        except (KeyError, ValueError, TypeError, OSError) as exc:
            raise StoreError(f"gallery file is damaged ({type(exc).__name__}: {exc})", path=path,
                             hint="restore it from a backup or re-enroll") from exc
    return g


def _write(g: Gallery, target: Path) -> None:
    str_dt = h5py.string_dtype()
    with h5py.File(target, "w") as f:
        init_store(f, KIND, SCHEMA)
        f.attrs["extractor_sha256"] = g.extractor_sha256 or ""
        f.attrs["embedding_dim"] = int(g.embedding_dim or 0)
        f.attrs["created"] = g.created or now_iso()
        f.attrs["updated"] = g.updated or now_iso()
        if g.calibration is not None:
            from fpt.report import dumps_json

            f.attrs["calibration"] = dumps_json(g.calibration, indent=None)
        models = f.create_group("models")
        for i, name in enumerate(g.names()):
            m = g.models[name]
            grp = models.create_group(f"m{i:04d}")
            grp.attrs["name"] = name
            grp.attrs["created"] = m.created
            grp.attrs["updated"] = m.updated
            grp.attrs["meta"] = json.dumps(m.meta, sort_keys=True)
            grp.create_dataset("embeddings", data=np.asarray(m.embeddings, np.float32))
            grp.create_dataset("fingerprint", data=m.fingerprint)
            grp.create_dataset("paths", data=np.array(m.paths, dtype=object), dtype=str_dt)
            grp.create_dataset("sha256", data=np.array(m.hashes, dtype=object), dtype=str_dt)
            grp.create_dataset("enrolled", data=np.array(m.dates, dtype=object), dtype=str_dt)
            grp.create_dataset("low_confidence", data=np.asarray(m.low_confidence, bool))


def save_gallery(g: Gallery, path: str | Path | None = None) -> None:
    """Atomically write ``g`` to ``path`` (callers hold the lock; see :func:`edit_gallery`)."""
    target = Path(path or g.path)
    with atomic_path(target) as tmp:
        _write(g, tmp)


@contextmanager
def edit_gallery(path: str | Path, *, create: bool = False) -> Iterator[Gallery]:
    """Lock, read (or start) the gallery, let the caller change it, write it back atomically.

    Any exception inside the block (Ctrl-C included) leaves the file as it was.
    """
    path = real_path(path)  # once: lock, read and replace the file a symlink points to
    with store_lock(path):
        if path.exists():
            check_writable(path, what="gallery file")  # a 0444 gallery is refused, not replaced
            g = load_gallery(path)
        elif create:
            g = Gallery(path=path, created=now_iso())
        else:
            raise StoreError("no such gallery file", path=path, hint="enroll a model first: fpt enroll MODEL IMAGES...")
        yield g
        g.updated = now_iso()
        if g.calibration is not None or any(m.count for m in g.models.values()):
            recalibrate(g)
        save_gallery(g, path)


def check_gallery_writable(path: str | Path) -> Path:
    """Fail fast, before any embedding work, when the gallery at ``path`` cannot be changed
    (read-only file or folder, missing folder, full or read-only disk). Returns the real path."""
    return check_writable(path, what="gallery file")


def writable_gallery_path(path: str | Path | None = None) -> Path:
    """The real path of the gallery to change (``path``, or the default one, whose folder is
    created), checked with :func:`check_gallery_writable`; call it before any slow work."""
    gpath = gallery_path(path)
    if path is None:  # the default location's folder is ours to create
        gpath.parent.mkdir(parents=True, exist_ok=True)
    return check_gallery_writable(gpath)


# ---------------------------------------------------------------- mutations (on a Gallery in memory)


@dataclass
class EnrolResult:
    model: str
    added: int
    duplicates: int
    total: int


def add_embeddings(g: Gallery, model: str, embeddings: np.ndarray, paths: list[str], hashes: list[str],
                   low_confidence: np.ndarray, extractor_sha256: str, embedding_dim: int,
                   meta: dict[str, str] | None = None) -> EnrolResult:
    """Add images to ``model`` (created if new); images whose sha256 is already there are skipped."""
    if not model or not model.strip():
        raise InputError("model name is empty")
    g.check_extractor(extractor_sha256)
    if not g.models:
        g.extractor_sha256, g.embedding_dim = extractor_sha256, int(embedding_dim)
    emb = np.asarray(embeddings, np.float32).reshape(-1, int(embedding_dim))
    stamp = now_iso()
    m = g.models.get(model)
    if m is None:
        m = ModelEntry(model, np.zeros((0, emb.shape[1]), np.float32), created=stamp)
        g.models[model] = m
    seen = set(m.hashes)
    keep = []
    for i, h in enumerate(hashes):
        if h not in seen:
            keep.append(i)
            seen.add(h)
    if keep:
        m.embeddings = np.concatenate([m.embeddings, _unit(emb[keep])])
        m.paths += [paths[i] for i in keep]
        m.hashes += [hashes[i] for i in keep]
        m.dates += [stamp] * len(keep)
        m.low_confidence = np.concatenate([m.low_confidence, np.asarray(low_confidence, bool)[keep]])
        m.updated = stamp
    if meta:
        m.meta.update(meta)
        m.updated = stamp
    return EnrolResult(model, len(keep), len(hashes) - len(keep), m.count)


def remove_model(g: Gallery, name: str) -> None:
    g.get(name)
    del g.models[name]


def rename_model(g: Gallery, old: str, new: str) -> None:
    m = g.get(old)
    if new in g.models:
        raise InputError(f"a model named '{new}' already exists", path=g.path,
                         hint="remove it first or choose another name")
    if not new.strip():
        raise InputError("new model name is empty")
    del g.models[old]
    m.name = new
    m.updated = now_iso()
    g.models[new] = m


# ---------------------------------------------------------------- calibration


#: elements (images x models) of one block of the leave-one-out passes: about 32 MB of float64
#: scores however many models are enrolled. One product per model would stream every fingerprint
#: from memory once per model (a gallery may hold 10^4 models); blocks of images make it one
#: compute-bound matrix product per block.
LOO_BLOCK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class LeaveOneOutScores:
    """One enrolled model's images scored against the gallery (:func:`leave_one_out_scores`)."""

    index: int  # the model's position in ``g.names()``
    emb: np.ndarray  # (n, D) float64, its unit embeddings
    loo: np.ndarray  # (n, D) its model's unit fingerprint rebuilt without each image
    own: np.ndarray  # (n,) cosine of each image to that leave-one-out fingerprint
    raw: np.ndarray  # (n, models) cosine of each image to every model's fingerprint, its own
    #                  column included (with the image): the caller's to modify


def model_blocks(counts, max_rows: int) -> Iterator[tuple[int, int]]:
    """Consecutive ranges ``[lo, hi)`` of models whose images (``counts``, in order) total at most
    ``max_rows``; a model with more images than that is a block on its own."""
    lo, n = 0, len(counts)
    while lo < n:
        hi, rows = lo + 1, counts[lo]
        while hi < n and rows + counts[hi] <= max_rows:
            rows += counts[hi]
            hi += 1
        yield lo, hi
        lo = hi


def leave_one_out_scores(g: Gallery, block_elements: int | None = None) -> Iterator[LeaveOneOutScores]:
    """:class:`LeaveOneOutScores` of every model with 2+ images, in ``g.names()`` order, computed
    a block of about ``block_elements`` (default :data:`LOO_BLOCK_ELEMENTS`) / models images at a
    time, in float64 as identify scores (the blocking changes a score by rounding at most)."""
    block_elements = LOO_BLOCK_ELEMENTS if block_elements is None else block_elements
    names, fps = g.fingerprint_matrix()
    fps64 = fps.astype(np.float64)
    counts = [g.models[n].count for n in names]
    for lo, hi in model_blocks(counts, max(1, block_elements // max(1, len(names)))):
        members = [i for i in range(lo, hi) if counts[i] >= 2]
        if not members:
            continue
        embs = [l2_normalise(g.models[names[i]].embeddings.astype(np.float64)) for i in members]
        block = np.concatenate(embs) @ fps64.T
        start = 0
        for i, e in zip(members, embs):
            loo = l2_normalise(e.sum(axis=0)[None, :] - e)
            yield LeaveOneOutScores(i, e, loo, np.sum(e * loo, axis=1), block[start:start + len(e)])
            start += len(e)


def calibration_scores(g: Gallery) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Leave-one-out scores over the gallery's own images.

    For every image of a model with >= 2 images: the *genuine* score is its cosine to its own
    model's fingerprint recomputed without it; the *impostor* score is its best cosine to any
    other model's fingerprint (as if its model were not enrolled: exactly the open-set "unknown"
    case; -1 with one model enrolled). Also returns whether the image would be identified
    correctly (own LOO score beats every other model).
    """
    gen, imp = [], []
    for s in leave_one_out_scores(g):
        s.raw[:, s.index] = -np.inf
        gen.append(s.own)
        imp.append(s.raw.max(axis=1) if s.raw.shape[1] > 1 else np.full(len(s.own), -1.0))
    if not gen:
        return np.zeros(0), np.zeros(0), np.zeros(0, bool)
    gen, imp = np.concatenate(gen), np.concatenate(imp)
    return gen, imp, gen > imp


def calibrate(g: Gallery, far: float = DEFAULT_FAR) -> Calibration:
    """Choose the open-set threshold at false-accept rate ``far`` and store it in ``g``."""
    from fpt.metrics.verification import threshold_at_far

    if not 0.0 <= far < 1.0:
        raise InputError(f"--far must be in [0, 1), got {far}")
    usable = [n for n, m in g.models.items() if m.count >= 2]
    if len(g.models) < 2 or not usable:
        raise InputError("calibration needs at least two enrolled models, one of them with 2+ images",
                         path=g.path, hint="enroll more models (10+ images each is best)")
    gen, imp, correct = calibration_scores(g)
    t = threshold_at_far(imp, far=far)
    cal = Calibration(
        far=float(far), threshold=float(t),
        expected_far=float(np.mean(imp >= t)), expected_frr=float(np.mean(gen < t)),
        loo_accuracy=float(np.mean(correct)), n_genuine=int(gen.size), n_impostor=int(imp.size),
        date=now_iso(), models=len(g.models),
    )
    g.calibration = cal
    return cal


def recalibrate(g: Gallery) -> None:
    """Keep a stored calibration in step with the gallery after a change (same FAR)."""
    far = g.calibration.far if g.calibration is not None else DEFAULT_FAR
    try:
        calibrate(g, far)
    except InputError:
        g.calibration = None


# ---------------------------------------------------------------- CSV export / import


CSV_FIELDS = ["model", "path", "sha256", "enrolled", "low_confidence", "extractor_sha256", "meta", "embedding"]


def export_csv(g: Gallery, out: str | Path) -> int:
    """One row per enrolled image, embedding as space-separated floats (full round trip)."""
    rows = 0
    with atomic_path(out) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(CSV_FIELDS)
            for name in g.names():
                m = g.models[name]
                meta = json.dumps(m.meta, sort_keys=True)
                for i in range(m.count):
                    w.writerow([name, m.paths[i], m.hashes[i], m.dates[i], int(m.low_confidence[i]),
                                g.extractor_sha256 or "", meta,
                                " ".join(f"{v:.8g}" for v in m.embeddings[i])])
                    rows += 1
    return rows


def import_csv(g: Gallery, src: str | Path) -> list[EnrolResult]:
    """Merge rows written by :func:`export_csv` into ``g`` (duplicates by sha256 skipped)."""
    src = Path(src)
    if not src.is_file():
        raise InputError("no such CSV file", path=src)
    groups: dict[str, dict] = {}
    try:
        with open(src, newline="", encoding="utf-8") as fh:
            r = csv.DictReader(fh)
            if r.fieldnames is None or not set(CSV_FIELDS) <= set(r.fieldnames):
                raise InputError("not a gallery CSV (missing columns)", path=src,
                                 hint=f"expected columns {', '.join(CSV_FIELDS)} as written by fpt gallery export")
            for line, row in enumerate(r, start=2):
                d = groups.setdefault(row["model"], {"emb": [], "paths": [], "hashes": [], "low": [],
                                                     "sha": row["extractor_sha256"], "meta": row["meta"]})
                if row["extractor_sha256"] != d["sha"]:
                    raise ExtractorMismatchError("rows of one model come from different extractors", path=src)
                try:
                    d["emb"].append(np.array(row["embedding"].split(), dtype=np.float32))
                except ValueError:
                    raise InputError(f"line {line}: embedding is not a list of numbers", path=src) from None
                d["paths"].append(row["path"])
                d["hashes"].append(row["sha256"])
                d["low"].append(row["low_confidence"] not in ("0", "", "False", "false"))
    except UnicodeDecodeError:
        raise InputError("not a text CSV file", path=src) from None
    results = []
    for name, d in groups.items():
        dims = {e.size for e in d["emb"]}
        if len(dims) != 1:
            raise InputError(f"model '{name}': embeddings have different lengths", path=src)
        emb = np.stack(d["emb"])
        results.append(add_embeddings(g, name, emb, d["paths"], d["hashes"], np.array(d["low"]),
                                      d["sha"], emb.shape[1], json.loads(d["meta"] or "{}")))
    return results


def parse_meta(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for it in items or []:
        if "=" not in it or not it.split("=", 1)[0].strip():
            raise InputError(f"--meta '{it}' is not key=value")
        k, v = it.split("=", 1)
        out[k.strip()] = v.strip()
    return out


