"""Path-level workflows of the public API (re-exported by :mod:`fpt`): embed images, enroll a
model into a gallery, identify images against it, verify two sets of images.

Each function walks files and folders like the CLI does, loads the shipped extractor unless one
is given (a loaded :class:`fpt.extractor.checkpoint.Extractor` or a checkpoint path), collects
unreadable files instead of stopping at them, and returns dataclasses. Nothing here prints;
long loops report through ``on_done(path)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fpt.errors import EmptyInputError, InputError

#: Images embedded between two gallery commits during enrolment: an interrupted enrolment of a
#: big folder keeps what it has done, and running it again skips those images (same sha256).
ENROLL_CHUNK = 256

PathsLike = str | Path | Sequence[str | Path]
OnDone = Callable[[Path], None] | None
OnFailure = Callable[[object], None] | None  # called with each fpt.extractor.embed.EmbedFailure as it happens


def _gallery_path(gallery: str | Path | None) -> Path:
    from fpt.gallery import gallery_path

    return gallery_path(gallery)


def _paths(paths: PathsLike) -> list[Path]:
    from fpt.images import find_images

    return find_images([paths] if isinstance(paths, (str, Path)) else list(paths))


def _extractor(extractor, device: str):
    if extractor is None or isinstance(extractor, (str, Path)):
        from fpt.extractor.checkpoint import load_extractor

        return load_extractor(extractor, device=device)
    return extractor


@dataclass
class Embedded:
    """Embeddings of the readable images, in input order, and the files that failed."""

    images: list  # fpt.extractor.embed.ImageEmbedding
    failures: list = field(default_factory=list)  # fpt.extractor.embed.EmbedFailure

    @property
    def matrix(self) -> np.ndarray:
        """(n, d) float32 unit rows."""
        return np.stack([r.embedding for r in self.images]) if self.images else np.zeros((0, 0), np.float32)

    @property
    def low_confidence(self) -> np.ndarray:
        return np.array([r.low_confidence for r in self.images], bool)

    def require_some(self, what: str = "input", hint: str | None = None) -> None:
        """Batch work carries on past bad files, but a run where every file failed is an error."""
        if not self.images:
            raise EmptyInputError(f"none of the {len(self.failures)} {what} image(s) could be read", hint=hint)


def embed(paths: PathsLike, extractor=None, *, device: str = "auto", windows: int | None = None,
          batch_size: int = 64, on_done: OnDone = None, on_failure: OnFailure = None) -> Embedded:
    """Fingerprint embedding of every image under ``paths`` (files and folders, recursively)."""
    from fpt.extractor.embed import EmbedFailure, iter_embeddings

    ex = _extractor(extractor, device)
    out = Embedded([], [])
    for r in iter_embeddings(ex, _paths(paths), windows=windows, batch_size=batch_size, on_done=on_done):
        if isinstance(r, EmbedFailure):
            out.failures.append(r)
            if on_failure is not None:
                on_failure(r)
        else:
            out.images.append(r)
    return out


def open_gallery(path: str | Path | None = None):
    """Read a gallery (default: ``$FPT_GALLERY`` or ``~/.local/share/fpt/gallery.h5``)."""
    from fpt.gallery import load_gallery

    return load_gallery(_gallery_path(path))


@dataclass
class Enrolment:
    model: str
    gallery: Path
    added: int  # new images
    already_enrolled: int  # images skipped because their sha256 was already there
    total: int  # images of the model in the gallery now
    low_confidence: int  # added images smaller than the extractor's window (mirror-padded)
    threshold: float | None  # the gallery's identification threshold after recalibration
    failures: list = field(default_factory=list)  # fpt.extractor.embed.EmbedFailure
    final: object = field(default=None, repr=False)  # the fpt.gallery.Gallery as last committed


def enroll(model: str, paths: PathsLike, gallery: str | Path | None = None, extractor=None, *,
           meta: dict[str, str] | None = None, device: str = "auto", windows: int | None = None,
           batch_size: int = 64, chunk: int | None = None, on_done: OnDone = None,
           on_failure: OnFailure = None) -> Enrolment:
    """Add the images under ``paths`` to ``model`` (created if new) in ``gallery``, committing
    every ``chunk`` images (default :data:`ENROLL_CHUNK`); images already enrolled (same sha256)
    are skipped. Checks that the gallery can be written before the slow part; the default
    gallery's folder is created. Stored image paths are absolute."""
    from fpt.extractor.embed import EmbedFailure, iter_embeddings
    from fpt.gallery import add_embeddings, edit_gallery, load_gallery, writable_gallery_path
    from fpt.storage import file_sha256

    chunk = ENROLL_CHUNK if chunk is None else chunk
    gpath = writable_gallery_path(gallery)  # before the slow part (and torch's import); symlinks resolved once
    files = _paths(paths)
    n_input = len(files)
    ex = _extractor(extractor, device)
    hashes: dict[Path, str] = {}
    if gpath.exists():  # fail fast on the wrong extractor, and skip known images before the slow part
        g0 = load_gallery(gpath)
        g0.check_extractor(ex.sha256)
        if model in g0.models:
            known = set(g0.models[model].hashes)
            hashes = {p: file_sha256(p) for p in files}
            files = [p for p in files if hashes[p] not in known]
    out = Enrolment(model, gpath, 0, n_input - len(files), 0, 0, None)
    pending: list = []

    def commit() -> None:
        dim = int(ex.embedding_dim)
        with edit_gallery(gpath, create=True) as g:
            r = add_embeddings(
                g, model, np.stack([x.embedding for x in pending]) if pending else np.zeros((0, dim), np.float32),
                [str(Path(x.path).resolve()) for x in pending], [hashes.get(x.path) or file_sha256(x.path) for x in pending],
                np.array([x.low_confidence for x in pending], bool), ex.sha256, dim, meta)
            if r.total == 0:  # nothing readable for a new model: leave the gallery untouched
                raise EmptyInputError(f"no readable images to enroll for '{model}' ({len(out.failures)} failed)")
        out.added += r.added
        out.already_enrolled += r.duplicates
        out.total = r.total
        out.threshold = g.calibration.threshold if g.calibration else None  # edit_gallery recalibrated
        out.final = g
        pending.clear()

    committed = False
    for r in iter_embeddings(ex, files, windows=windows, batch_size=batch_size, on_done=on_done):
        if isinstance(r, EmbedFailure):
            out.failures.append(r)
            if on_failure is not None:
                on_failure(r)
            continue
        out.low_confidence += bool(r.low_confidence)
        pending.append(r)
        if len(pending) >= chunk:
            commit()
            committed = True
    if pending or not committed:
        commit()
    return out


def identify(paths: PathsLike, gallery=None, extractor=None, *, top_k: int = 3, threshold: float | None = None,
             device: str = "auto", windows: int | None = None, batch_size: int = 64,
             on_done: OnDone = None, on_failure: OnFailure = None, **decision) -> tuple[list, list]:
    """Which enrolled model made each image (``unknown`` below the threshold).

    ``gallery`` is a path (default gallery when None) or an opened gallery. ``decision`` passes
    ``cohort``, ``min_log10_lr``, ``lr_from`` and ``rank`` ("whitened" or "cosine") to
    :func:`fpt.attribution.identify_embeddings`.
    Returns ``(identifications, failures)``: :class:`fpt.attribution.Identification` per
    readable image; unreadable files also go to ``on_failure`` as they happen.
    """
    from fpt.attribution import identify_embeddings
    from fpt.gallery import Gallery

    g = gallery if isinstance(gallery, Gallery) else open_gallery(gallery)
    if not g.models:
        raise InputError("the gallery has no models", path=g.path, hint="fpt enroll MODEL IMAGES...")
    ex = _extractor(extractor, device)
    g.check_extractor(ex.sha256)
    e = embed(paths, ex, windows=windows, batch_size=batch_size, on_done=on_done, on_failure=on_failure)
    e.require_some(hint="each file's reason was reported as it failed")
    ids = identify_embeddings(g, e.matrix, top_k=top_k, threshold=threshold, paths=[str(r.path) for r in e.images],
                              low_confidence=e.low_confidence, **decision)
    return ids, e.failures


def extractor_cohort(ex, explicit: str | Path | None = None, lr_from: str = "gallery",
                     on_warning: Callable[[str], None] | None = None):
    """The cohort that normalises ``ex``'s scores: ``explicit`` or the file beside the checkpoint,
    or None. A stale cohort beside the checkpoint (weights changed, cohort not rebuilt) is passed
    to ``on_warning`` and dropped, since the default gallery-calibrated LR does not need it; with
    ``lr_from="cohort"`` a missing or uncalibrated cohort is a ConfigError."""
    from fpt.attribution import LR_SOURCES
    from fpt.cohort import find_cohort
    from fpt.errors import ConfigError, ExtractorMismatchError

    if lr_from not in LR_SOURCES:
        raise ConfigError(f"--lr-from must be one of {', '.join(LR_SOURCES)}, not '{lr_from}'")
    try:
        coh = find_cohort(ex.sha256, getattr(ex, "path", None), explicit)
    except ExtractorMismatchError as exc:
        if explicit is not None or lr_from == "cohort":
            raise
        if on_warning is not None:
            on_warning(exc.one_line())
        coh = None
    if lr_from == "cohort" and (coh is None or coh.calibration is None):
        raise ConfigError("--lr-from cohort: this extractor has no calibrated cohort",
                          hint="pass --cohort FILE or build one: fpt cohort build (docs/calibration.md)")
    return coh


def verify(a: PathsLike, b: PathsLike, gallery=None, extractor=None, *, threshold: float | None = None,
           min_log10_lr: float = 0.0, lr_from: str = "gallery", cohort=None, device: str = "auto",
           windows: int | None = None, batch_size: int = 64, on_done: OnDone = None,
           on_failure: OnFailure = None, on_warning: Callable[[str], None] | None = None):
    """Were the images of ``a`` and of ``b`` made by the same model? Each side's images are
    averaged into one fingerprint, and the decision is ``fpt verify``'s: "same model" when the
    calibrated log10 likelihood ratio reaches ``min_log10_lr`` (LR fitted on ``gallery``'s image
    sets of this size, or on the extractor's cohort with ``lr_from="cohort"``), or when the raw
    cosine reaches ``threshold`` if one is given. ``cohort``: a loaded cohort, a path, or None
    for the file beside the checkpoint (see :func:`extractor_cohort`; ``on_warning`` gets its
    warning). Returns :class:`fpt.attribution.Verification`."""
    from fpt.attribution import verify_embeddings
    from fpt.cohort import Cohort

    ex = _extractor(extractor, device)
    coh = cohort if isinstance(cohort, Cohort) else extractor_cohort(ex, cohort, lr_from, on_warning)
    sides = [embed(p, ex, windows=windows, batch_size=batch_size, on_done=on_done, on_failure=on_failure)
             for p in (a, b)]
    for name, side in zip("AB", sides):
        if not side.images:
            raise EmptyInputError(f"no readable images on side {name}")
    gcal, src = verify_calibration(gallery, ex.sha256, min(len(s.images) for s in sides), threshold=threshold,
                                   min_log10_lr=min_log10_lr, lr_from=lr_from)
    low = any(bool(s.low_confidence.any()) for s in sides)
    return verify_embeddings(sides[0].matrix, sides[1].matrix, threshold, src, low, cohort=coh,
                             min_log10_lr=min_log10_lr, lr_from=lr_from, gallery_calibration=gcal)


def verify_calibration(gallery, extractor_sha256: str, n_s: int, *, threshold: float | None = None,
                       min_log10_lr: float = 0.0, lr_from: str = "gallery"):
    """What decides a verification of ``n_s``-image sets: ``(gallery_calibration, source)``.

    With ``lr_from="gallery"`` the gallery (a path, None for the default) is read when it must
    decide (no ``threshold``) or exists, and a logistic raw-cosine -> LR map is fitted on its
    image sets; a gallery too small for that is an error only when no ``threshold`` is given.
    ``source`` is the line recorded as the verification's ``threshold_source``.
    """
    from fpt.attribution import verify_lr_calibration
    from fpt.gallery import load_gallery

    src, gcal = "--threshold", None
    if lr_from == "gallery":
        gp = _gallery_path(gallery)
        if threshold is None or gp.exists():  # a missing gallery is an error only when it must decide
            g = load_gallery(gp)
            g.check_extractor(extractor_sha256)
            try:
                gcal, n_eff = verify_lr_calibration(g, n_s)
            except InputError:
                if threshold is None:
                    raise
            else:
                if threshold is None:
                    src = f"log10 LR >= {min_log10_lr:g} (LR calibrated on {g.path.name}, N_S={n_eff})"
    elif threshold is None:
        src = f"log10 LR >= {min_log10_lr:g} (LR calibrated on the cohort)"
    return gcal, src


def identify_decision(results: list, gallery, *, threshold: float | None, min_log10_lr: float,
                      lr_from: str) -> tuple[str, bool]:
    """What decided an identification run: ``(source, undecidable)``; ``undecidable`` is True when
    neither a likelihood ratio, nor ``threshold``, nor the gallery's calibration could call an
    image unknown."""
    if results and results[0].min_log10_lr is not None:
        return f"log10 LR >= {min_log10_lr:g} ({lr_from}-calibrated LR)", False
    if threshold is not None:
        return "--threshold", False
    return ("calibrated", False) if gallery.calibration else ("none", True)
