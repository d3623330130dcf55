"""``fpt eval``: the papers' attribution protocols on labelled folders, for several methods at once.

Input layout: ``ROOT/<model>/*`` (any depth below ``ROOT``; a folder that holds images directly is
one model, named by its path relative to ROOT). CNNDetection-style ``<gen>/{fake,real}`` folders:
``<gen>/fake`` is the model (named ``<gen>``) and the sibling ``real`` folder (camera photos, not a
generator) is skipped.

Models are evaluated in *groups*, each group on its own: models nested under a common folder
(``cnndetection-jpeg/*``) form that folder's group; models whose images are smaller than
``small_side`` px (28 px MNIST) form the ``small-images`` group; the rest form ``main``. Mixing
them would let image size or JPEG alone separate models.

Per group, with the same splits and pairs for every method (each image is loaded once and the same
tensors go to every method):

- **1:1 verification** (paper 001 §IV-A, paper 000 Table 2): each model's images are split in half,
  *calibration* and *test*. Balanced genuine / impostor pairs of image sets (N_S in {1, 5, 10}
  images a side, set fingerprint = mean embedding) are drawn inside each half. AUC and EER on the
  test pairs; accuracy on the test pairs at the threshold that maximised accuracy on the
  calibration pairs (never tuned on the test pairs, unlike the authors' code); the oracle
  best-threshold accuracy on test is given too, labelled as such, for comparison with the papers.
- **10-shot 1:N identification**: per model 10 random images make the fingerprint, the rest are
  probes; accuracy and macro-F1, averaged over ``repeats`` random draws; per-model accuracy.
- **Open set**: ``unknown_fraction`` of the models (at least one) are left out of the gallery;
  AUROC of best-score for known vs unknown probes, and accuracy (right model or correctly
  "unknown") at the threshold ``fpt gallery calibrate`` would pick from the 10-shot gallery's own
  images (leave-one-out, FAR 0.05).
- **Clustering**: silhouette and Davies-Bouldin of the unit embeddings against model labels, and
  the Fréchet-distance ratio of paper 002 (inter-model FD / intra-model FD; higher = more separable).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fpt.errors import ConfigError, EmptyInputError, InputError
from fpt.images import IMAGE_EXTENSIONS, load_image
from fpt.eval_decisions import DecisionResult, run_decisions
from fpt.metrics import identification as I
from fpt.metrics import verification as M

NS_VALUES = (1, 5, 10)
#: methods whose vectors depend on a fixed crop size (``baseline_crop``): rebuilt per group
CROP_DEPENDENT = frozenset({"prnu", "spectrum"})
SMALL_SIDE = 32


# ---------------------------------------------------------------- discovery


@dataclass
class ModelFolder:
    label: str
    group: str
    paths: list[Path]


def _has_images(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _image_side(p: Path) -> int:
    from PIL import Image

    try:
        with Image.open(p) as im:
            return min(im.size)
    except Exception:
        return 0


def discover_models(root: str | Path, small_side: int = SMALL_SIDE) -> list[ModelFolder]:
    """Find model folders under ``root`` (see module docstring for the layout rules)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError("not a folder", path=root, hint="fpt eval expects ROOT/<model>/<images>")
    if _has_images(root):
        raise InputError("images directly in ROOT", path=root,
                         hint="put each model's images in its own sub-folder: ROOT/<model>/*.png")
    found: list[ModelFolder] = []
    seen: set[str] = set()
    # followlinks: a symlinked model folder is a model folder (os.walk skips links by default);
    # each real folder is visited once, which also stops symlink loops.
    for dirpath, dirnames, _ in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        d = Path(dirpath)
        if d == root:
            continue
        imgs = _has_images(d)
        if not imgs:
            continue
        rel = d.relative_to(root)
        if d.name == "real" and (d.parent / "fake").is_dir():
            continue  # camera photos paired with a generator's fakes: not a model
        if d.name == "fake":
            rel = rel.parent
        label = rel.as_posix()
        parts = rel.parts
        if len(parts) > 1:
            group = parts[0]
        else:
            sides = [_image_side(p) for p in imgs[:3]]
            group = "small-images" if max(sides) < small_side else "main"
        found.append(ModelFolder(label, group, imgs))
    if not found:
        raise EmptyInputError(f"no model folders with images under {root}")
    return found


# ---------------------------------------------------------------- results


@dataclass
class VerificationScores:
    n_s: int
    test_scores: np.ndarray
    test_same: np.ndarray
    cal_threshold: float
    auc: float
    eer: float
    accuracy: float  # at the calibration-split threshold
    oracle_accuracy: float  # best threshold on the test pairs (papers' number; optimistic)


@dataclass
class MethodResult:
    method: str
    verification: dict[int, VerificationScores | None] = field(default_factory=dict)
    id_accuracy: float | None = None
    id_macro_f1: float | None = None
    id_per_model: dict[str, float] = field(default_factory=dict)
    # true model -> {predicted model: share of its probes}, pooled over the identification splits
    id_confusion: dict[str, dict[str, float]] = field(default_factory=dict)
    open_auroc: float | None = None
    open_accuracy: float | None = None
    open_known_accuracy: float | None = None
    open_unknown_rejection: float | None = None
    silhouette: float | None = None
    davies_bouldin: float | None = None
    fd_ratio: float | None = None
    seconds: float = 0.0
    decisions: "DecisionResult | None" = None  # Cllr and the open-set sweep (fpt.eval_decisions)


@dataclass
class GroupResult:
    group: str
    models: list[str]
    counts: dict[str, int]
    methods: dict[str, MethodResult]
    notes: list[str] = field(default_factory=list)


@dataclass
class EvalResult:
    root: str
    methods: list[str]
    groups: list[GroupResult]
    failures: list[tuple[str, str]]
    seed: int
    settings: dict


# ---------------------------------------------------------------- protocol


@dataclass
class GroupSplits:
    """Everything random about one group, drawn once and shared by every method."""

    labels: np.ndarray
    pairs: dict[int, tuple | None]  # n_s -> (calA, calB, cal_same, testA, testB, test_same) or None
    id_splits: list[tuple[np.ndarray, np.ndarray]]
    open_splits: list[tuple[list[str], np.ndarray, np.ndarray]]  # (unknown models, gallery idx, probe idx)
    notes: list[str]


def make_splits(labels: np.ndarray, *, seed: int, n_pairs: int, k_shot: int, repeats: int,
                unknown_fraction: float, ns_values: Sequence[int] = NS_VALUES) -> GroupSplits:
    rng = np.random.default_rng(seed)
    notes: list[str] = []
    cal_idx, test_idx = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.nonzero(labels == c)[0])
        h = idx.size // 2
        cal_idx.extend(idx[:h])
        test_idx.extend(idx[h:])
    cal_idx, test_idx = np.sort(cal_idx), np.sort(test_idx)
    pairs: dict[int, tuple | None] = {}
    for n_s in ns_values:
        try:
            ca, cb, cs = M.set_pairs(labels[cal_idx], n_s, max(200, n_pairs // 2), rng)
            ta, tb, ts = M.set_pairs(labels[test_idx], n_s, n_pairs, rng)
            pairs[n_s] = (cal_idx[ca], cal_idx[cb], cs, test_idx[ta], test_idx[tb], ts)
        except ValueError as exc:
            pairs[n_s] = None
            notes.append(f"verification N_S={n_s} skipped: {exc} (in each half)")
    counts = {c: int(np.sum(labels == c)) for c in np.unique(labels)}
    id_splits = []
    if sum(n > k_shot for n in counts.values()) >= 1 and len(counts) >= 2:
        id_splits = [I.k_shot_split(labels, k_shot, rng) for _ in range(repeats)]
    else:
        notes.append(f"identification skipped: needs 2+ models and some with more than {k_shot} images")
    open_splits = []
    classes = sorted(counts)
    if len(classes) >= 3:
        n_unk = max(1, int(round(unknown_fraction * len(classes))))
        n_unk = min(n_unk, len(classes) - 2)
        for _ in range(repeats):
            unk = list(rng.choice(classes, size=n_unk, replace=False))
            known_mask = ~np.isin(labels, unk)
            gal, probe = I.k_shot_split(np.where(known_mask, labels, "__unknown__"), k_shot, rng)
            gal = gal[known_mask[gal]]
            probe = np.sort(np.r_[probe[known_mask[probe]], np.nonzero(~known_mask)[0]])
            open_splits.append((unk, gal, probe))
    else:
        notes.append("open-set skipped: needs 3+ models (2 known, 1 unknown)")
    return GroupSplits(labels, pairs, id_splits, open_splits, notes)


def confusion_shares(y_true: Sequence[str], y_pred: Sequence[str]) -> dict[str, dict[str, float]]:
    """Row-normalised confusion: true model -> {predicted model: share of its probes}."""
    from collections import Counter

    pairs = Counter(zip(y_true, y_pred))
    totals = Counter(y_true)
    return {t: {p: pairs[t, p] / totals[t] for p in sorted({p for tt, p in pairs if tt == t})}
            for t in sorted(totals)}


def most_confused_with(row: dict[str, float], model: str) -> tuple[str, float] | None:
    """The wrong model a model's probes go to most often, with its share (None if never wrong)."""
    wrong = [(share, p) for p, share in row.items() if p != model and share > 0]
    if not wrong:
        return None
    share, p = max(wrong)
    return p, share


def _open_set_threshold(emb: np.ndarray, labels: np.ndarray, gal: np.ndarray, far: float) -> float:
    """The threshold ``fpt gallery calibrate`` would store for a gallery of these images."""
    from fpt.gallery import Gallery, ModelEntry, calibration_scores

    g = Gallery(path=Path("<eval>"))
    for c in np.unique(labels[gal]):
        g.models[str(c)] = ModelEntry(str(c), np.asarray(emb[gal[labels[gal] == c]], np.float32))
    _, imp, _ = calibration_scores(g)
    return M.threshold_at_far(imp, far=far)


def run_method(method: str, emb: np.ndarray, splits: GroupSplits, far: float = 0.05,
               shrinkage: float | None = None) -> MethodResult:
    """Every protocol for one method's embeddings. ``shrinkage``: models are ranked after the
    gallery's own within-model whitening (:func:`fpt.metrics.identification.gallery_scores`), as
    ``fpt identify --rank whitened`` ranks them; None ranks by raw cosine."""
    labels = splits.labels
    res = MethodResult(method)
    emb = M.l2_normalise(np.asarray(emb, np.float32))
    for n_s, pr in splits.pairs.items():
        if pr is None:
            res.verification[n_s] = None
            continue
        ca, cb, cs, ta, tb, ts = pr
        cal_s = M.pair_scores(emb, ca, cb)
        test_s = M.pair_scores(emb, ta, tb)
        _, t = M.best_accuracy(cal_s, cs)
        res.verification[n_s] = VerificationScores(
            n_s=n_s, test_scores=test_s, test_same=ts, cal_threshold=t,
            auc=M.roc_auc(test_s, ts), eer=M.eer(test_s, ts)[0],
            accuracy=M.accuracy_at_threshold(test_s, ts, t), oracle_accuracy=M.best_accuracy(test_s, ts)[0])
    if splits.id_splits:
        accs, f1s, per = [], [], {}
        y_true, y_pred = [], []
        for split in splits.id_splits:
            r = I.identify_k_shot(emb, labels, split=split, shrinkage=shrinkage)
            accs.append(r.accuracy)
            f1s.append(r.macro_f1)
            for c, a in r.per_class_accuracy().items():
                per.setdefault(str(c), []).append(a)
            y_true += [str(c) for c in r.y_true]
            y_pred += [str(c) for c in r.y_pred]
        res.id_accuracy, res.id_macro_f1 = float(np.mean(accs)), float(np.mean(f1s))
        res.id_per_model = {c: float(np.mean(v)) for c, v in per.items()}
        res.id_confusion = confusion_shares(y_true, y_pred)
    if splits.open_splits:
        aurocs, accs, kaccs, urej = [], [], [], []
        for unk, gal, probe in splits.open_splits:
            classes, raw, rank = I.gallery_scores(emb, labels, gal, probe, shrinkage)
            top = rank.argmax(axis=1)
            best = raw[np.arange(len(top)), top]  # the decision reads the raw cosine of the ranked-first model
            pred = np.asarray(classes, dtype=object)[top]
            is_unk = np.isin(labels[probe], unk)
            aurocs.append(I.open_set_auroc(best[~is_unk], best[is_unk]))
            t = _open_set_threshold(emb, labels, gal, far)
            accept = best >= t
            ok_known = (~is_unk) & accept & (pred == labels[probe])
            ok_unk = is_unk & ~accept
            accs.append(float(np.mean(ok_known | ok_unk)))
            kaccs.append(float(np.mean(ok_known[~is_unk])))
            urej.append(float(np.mean(ok_unk[is_unk])))
        res.open_auroc, res.open_accuracy = float(np.mean(aurocs)), float(np.mean(accs))
        res.open_known_accuracy, res.open_unknown_rejection = float(np.mean(kaccs)), float(np.mean(urej))
    if len(np.unique(labels)) >= 2:
        from fpt.metrics.clustering import davies_bouldin, fd_ratio, silhouette

        res.silhouette = float(silhouette(emb, labels))
        res.davies_bouldin = float(davies_bouldin(emb, labels))
        try:
            res.fd_ratio = float(fd_ratio(emb, labels))
        except ValueError:  # a model with fewer than 4 images has no two halves to compare
            res.fd_ratio = None
    return res


# ---------------------------------------------------------------- driver


def evaluate(root: str | Path, methods: Sequence[str], *, seed: int = 0, n_pairs: int = 2000, k_shot: int = 10,
             repeats: int = 5, unknown_fraction: float = 0.3, far: float = 0.05, small_side: int = SMALL_SIDE,
             representation_kwargs: dict | None = None,
             progress: Callable[[str, int], Callable[[int], None]] | None = None,
             extra_groups: dict[str, list[str]] | None = None, cohort: str | Path | None = None,
             min_log10_lr: float | None = None, rank: str = "whitened") -> EvalResult:
    """Run every protocol for every method on the labelled folders under ``root``.

    ``progress(description, total)`` may return a callback ``advance(n)`` for progress display.
    ``extra_groups`` names further groups by their model labels (e.g. a text-to-image subset of
    ``main``), evaluated on their own as well. The ``fpt`` method's decision layer (Cllr, open-set
    sweep) uses ``cohort`` or the cohort beside its extractor, when there is one. ``rank``: how
    galleries rank their models, for every method (``fpt identify --rank``): ``whitened`` (the
    gallery's own within-model whitening) or ``cosine``.
    """
    from fpt.attribution import rank_shrinkage
    from fpt.calibration import DEFAULT_MIN_LOG10_LR

    level = DEFAULT_MIN_LOG10_LR if min_log10_lr is None else float(min_log10_lr)
    import time

    from fpt.representations import build_representation

    if not methods:
        raise ConfigError("no methods given", hint="e.g. --methods fpt,prnu,spectrum")
    shrinkage = rank_shrinkage(rank)
    folders = discover_models(root, small_side)
    kwargs = dict(representation_kwargs or {})
    ex = kwargs.get("extractor")
    if "fpt" in methods and (ex is None or isinstance(ex, (str, Path))):
        from fpt.extractor.checkpoint import load_extractor

        kwargs["extractor"] = load_extractor(ex, device=kwargs.get("device", "auto"))  # once, for every group
    cohorts: dict[str, object] = {}
    if "fpt" in methods:
        from fpt.cohort import find_cohort

        fx = kwargs["extractor"]
        cohorts["fpt"] = find_cohort(fx.sha256, getattr(fx, "path", None), cohort)
    # Built once (extractors, manifolds are costly); the fixed-crop baselines are rebuilt per group.
    shared = {m: build_representation(m, seed=seed, **kwargs) for m in methods if m not in CROP_DEPENDENT}
    for m in methods:  # fail on a bad method name before loading any image
        if m in CROP_DEPENDENT:
            build_representation(m, seed=seed, **kwargs)

    images: list[torch.Tensor] = []
    labels: list[str] = []
    groups: list[str] = []
    failures: list[tuple[str, str]] = []
    total = sum(len(f.paths) for f in folders)
    adv = progress("loading images", total) if progress else None
    from fpt.errors import FptError

    for f in folders:
        for p in f.paths:
            try:
                images.append(load_image(p))
                labels.append(f.label)
                groups.append(f.group)
            except FptError as exc:
                failures.append((str(p), exc.one_line()))
            if adv:
                adv(1)
    if not images:
        raise EmptyInputError(f"no readable images under {root}")
    labels_a = np.array(labels, dtype=object)
    groups_a = np.array(groups, dtype=object)

    plan = [(g, np.nonzero(groups_a == g)[0]) for g in sorted(set(groups), key=lambda g: (g != "main", g))]
    for gname, members in (extra_groups or {}).items():
        missing = sorted(set(members) - set(labels))
        if missing:
            raise InputError(f"--group {gname}: no model folder named {', '.join(missing)}", path=root,
                             hint="use the model labels fpt eval prints (folder paths relative to ROOT)")
        plan.append((gname, np.nonzero(np.isin(labels_a, list(members)))[0]))
    out_groups = []
    for gi, (gname, idx) in enumerate(plan):
        # Baselines compare fixed-size residuals: use the group's smallest side (<= 256) so no
        # image is padded unless the whole group is tiny. Same tensors for every method.
        side = min(min(images[i].shape[-2:]) for i in idx)
        gkw = dict(kwargs)
        gkw.setdefault("baseline_crop", max(8, min(256, side) // 2 * 2))
        embs: dict[str, np.ndarray] = {}
        secs: dict[str, float] = {}
        for m in methods:
            rep = shared[m] if m in shared else build_representation(m, seed=seed, **gkw)
            t0 = time.perf_counter()
            adv = progress(f"{gname}: embedding with {m}", idx.size) if progress else None
            parts = []
            step = 64
            for i in range(0, idx.size, step):
                parts.append(np.asarray(rep.embed_images([images[j] for j in idx[i:i + step]]), np.float32))
                if adv:
                    adv(min(step, idx.size - i))
            embs[m] = np.concatenate(parts)
            secs[m] = time.perf_counter() - t0
        glabels = labels_a[idx].astype(str)
        counts = {c: int(np.sum(glabels == c)) for c in np.unique(glabels)}
        if len(counts) < 2:
            out_groups.append(GroupResult(gname, sorted(counts), counts, {},
                                          [f"group '{gname}' has one model only: nothing to compare"]))
            continue
        splits = make_splits(glabels, seed=seed + 1000 * gi, n_pairs=n_pairs, k_shot=k_shot, repeats=repeats,
                             unknown_fraction=unknown_fraction)
        mres = {}
        for m in methods:
            r = run_method(m, embs[m], splits, far=far, shrinkage=shrinkage)
            r.seconds = secs[m]
            r.decisions = run_decisions(embs[m], glabels, splits.pairs, cohorts.get(m), seed=seed + 1000 * gi,
                                        repeats=repeats, unknown_fraction=unknown_fraction, far=far,
                                        min_log10_lr=level, base_draws=(k_shot, splits.open_splits),
                                        shrinkage=shrinkage)
            mres[m] = r
        out_groups.append(GroupResult(gname, sorted(counts), counts, mres, splits.notes))
    settings = dict(n_pairs=n_pairs, k_shot=k_shot, repeats=repeats, unknown_fraction=unknown_fraction, far=far,
                    ns_values=list(NS_VALUES), small_side=small_side, min_log10_lr=level, rank=rank,
                    rank_shrinkage=shrinkage, extra_groups=dict(extra_groups or {}),
                    cohorts={m: (str(c.path) if c is not None else None) for m, c in cohorts.items()})
    return EvalResult(str(root), list(methods), out_groups, failures, seed, settings)


# ---------------------------------------------------------------- rendering helpers


SUMMARY_METRICS = [
    ("verification AUC, N_S=1", lambda r: _v(r, 1, "auc")),
    ("verification AUC, N_S=5", lambda r: _v(r, 5, "auc")),
    ("verification AUC, N_S=10", lambda r: _v(r, 10, "auc")),
    ("verification EER, N_S=1", lambda r: _v(r, 1, "eer")),
    ("verification EER, N_S=10", lambda r: _v(r, 10, "eer")),
    ("verification acc, N_S=1 (cal. thr.)", lambda r: _v(r, 1, "accuracy")),
    ("verification acc, N_S=10 (cal. thr.)", lambda r: _v(r, 10, "accuracy")),
    ("verification acc, N_S=1 (oracle thr.)", lambda r: _v(r, 1, "oracle_accuracy")),
    ("{k}-shot identification acc", lambda r: r.id_accuracy),
    ("{k}-shot identification macro-F1", lambda r: r.id_macro_f1),
    ("open-set AUROC", lambda r: r.open_auroc),
    ("open-set acc (cal. thr.)", lambda r: r.open_accuracy),
    ("open-set acc (LR gallery)", lambda r: _d_acc(r, "LR gallery")),
    ("open-set acc (LR cohort)", lambda r: _d_acc(r, "LR cohort")),
    ("Cllr N_S=1 (LR gallery)", lambda r: _d_cllr(r, "gallery", 1, "cllr")),
    ("Cllr N_S=10 (LR gallery)", lambda r: _d_cllr(r, "gallery", 10, "cllr")),
    ("Cllr N_S=1 (LR cohort)", lambda r: _d_cllr(r, "cohort", 1, "cllr")),
    ("Cllr N_S=10 (LR cohort)", lambda r: _d_cllr(r, "cohort", 10, "cllr")),
    ("Cllr_min N_S=1 (raw)", lambda r: _d_cllr(r, "gallery", 1, "cllr_min")),
    ("Cllr_min N_S=10 (raw)", lambda r: _d_cllr(r, "gallery", 10, "cllr_min")),
    ("silhouette", lambda r: r.silhouette),
    ("Davies-Bouldin (lower=better)", lambda r: r.davies_bouldin),
    ("FD ratio (paper 002)", lambda r: r.fd_ratio),
    ("embedding time, s", lambda r: r.seconds),
]


def _d_acc(r: MethodResult, point: str):
    """Open-set accuracy at an operating point in the (all models, k_shot) cell: the main protocol's draws."""
    if r.decisions is None:
        return None
    cells = [c for c in r.decisions.open_set if c.main_protocol]
    return cells[0].accuracy.get(point) if cells else None


def _d_cllr(r: MethodResult, source: str, n: int, key: str):
    if r.decisions is None:
        return None
    v = r.decisions.cllr.get(source, {}).get(n)
    return None if v is None else v[key]


def _v(r: MethodResult, n: int, attr: str):
    x = r.verification.get(n)
    return None if x is None else getattr(x, attr)


def summary_table(g: GroupResult, k_shot: int = 10) -> tuple[list[str], list[list]]:
    """Metrics as rows, methods as columns (fits a terminal for any number of metrics)."""
    cols = ["metric"] + list(g.methods)
    rows = [[name.format(k=k_shot)] + [f(r) for r in g.methods.values()] for name, f in SUMMARY_METRICS]
    return cols, rows


def per_model_rows(g: GroupResult) -> tuple[list[str], list[list]]:
    """Per model: identification accuracy of every method, and what the first method mistakes it for."""
    first = next(iter(g.methods))
    cols = ["model", "images"] + [f"ID acc {m}" for m in g.methods] + [f"{first} mistakes it for"]
    prefix = g.group + "/"
    def short(name: str) -> str:
        return name[len(prefix):] if name.startswith(prefix) else name

    def mistaken(name: str) -> str:
        worst = most_confused_with(g.methods[first].id_confusion.get(name, {}), name)
        return "-" if worst is None else f"{short(worst[0])} ({100 * worst[1]:.0f}%)"

    rows = [[short(name), g.counts[name]] + [g.methods[m].id_per_model.get(name) for m in g.methods]
            + [mistaken(name)] for name in g.models]
    return cols, rows


def to_json(res: EvalResult) -> dict:
    """Compact JSON (scores arrays left out)."""
    groups = []
    for g in res.groups:
        methods = {}
        for m, r in g.methods.items():
            methods[m] = {
                "verification": {str(n): (None if v is None else {
                    "auc": v.auc, "eer": v.eer, "accuracy_at_calibrated_threshold": v.accuracy,
                    "calibrated_threshold": v.cal_threshold, "oracle_accuracy": v.oracle_accuracy,
                    "test_pairs": int(v.test_same.size)}) for n, v in r.verification.items()},
                "identification": {"accuracy": r.id_accuracy, "macro_f1": r.id_macro_f1, "per_model": r.id_per_model,
                                   "confusion": r.id_confusion},
                "open_set": {"auroc": r.open_auroc, "accuracy_at_calibrated_threshold": r.open_accuracy,
                             "known_accuracy": r.open_known_accuracy, "unknown_rejection": r.open_unknown_rejection},
                "clustering": {"silhouette": r.silhouette, "davies_bouldin": r.davies_bouldin, "fd_ratio": r.fd_ratio},
                "embed_seconds": r.seconds,
                "decisions": r.decisions,
            }
        groups.append({"group": g.group, "models": g.counts, "methods": methods, "notes": g.notes})
    return {"root": res.root, "methods": res.methods, "seed": res.seed, "settings": res.settings,
            "groups": groups, "failures": [{"path": p, "error": e} for p, e in res.failures]}


def plot_group(g: GroupResult, out_dir: str | Path) -> list[Path]:
    """ROC curves (one panel per N_S) and genuine/impostor histograms (one panel per method, N_S=1)."""
    from fpt.report import pyplot, save_figure

    plt = pyplot()
    out_dir = Path(out_dir)
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in g.group)
    paths = []
    ns = [n for n in NS_VALUES if any(r.verification.get(n) for r in g.methods.values())]
    if not ns:
        return paths
    fig, axes = plt.subplots(1, len(ns), figsize=(4.2 * len(ns), 4), squeeze=False)
    for ax, n in zip(axes[0], ns):
        for m, r in g.methods.items():
            v = r.verification.get(n)
            if v is None:
                continue
            fpr, tpr, _ = M.roc_curve(v.test_scores, v.test_same)
            ax.plot(fpr, tpr, label=f"{m} (AUC {v.auc:.3f})")
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set_title(f"{g.group}: verification ROC, N_S={n}")
        ax.set_xlabel("false accept rate")
        ax.set_ylabel("true accept rate")
        ax.legend(loc="lower right", fontsize=8)
    paths.append(save_figure(fig, out_dir / f"eval_{safe}_roc.png"))
    ms = [m for m, r in g.methods.items() if r.verification.get(1)]
    if ms:
        fig, axes = plt.subplots(1, len(ms), figsize=(4.2 * len(ms), 3.4), squeeze=False)
        for ax, m in zip(axes[0], ms):
            v = g.methods[m].verification[1]
            lo, hi = float(v.test_scores.min()), float(v.test_scores.max())
            pad = max(1e-6, 0.02 * (hi - lo))
            bins = np.linspace(lo - pad, hi + pad, 50)  # the data's own range: scores may crowd near 1
            ax.hist(v.test_scores[v.test_same], bins=bins, alpha=0.6, label="same model", density=True)
            ax.hist(v.test_scores[~v.test_same], bins=bins, alpha=0.6, label="different models", density=True)
            ax.axvline(v.cal_threshold, color="k", ls="--", lw=1, label="calibrated threshold")
            ax.set_title(f"{m}: cosine similarity, N_S=1")
            ax.legend(fontsize=7)
        paths.append(save_figure(fig, out_dir / f"eval_{safe}_hist.png"))
    return paths
