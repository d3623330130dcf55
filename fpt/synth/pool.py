"""The pool store: one HDF5 file holding every trained synthetic model.

Layout (schema 1)::

    /                      attrs fpt_kind="pool", fpt_schema=1, config=<JSON TrainConfig + crop digest>
    /models/<arch>/s<seed> one group per model: attrs = ModelRecord fields,
        weights/<param>    float32 datasets (the state dict; BatchNorm counters included)

Crash safety. The live file is never modified in place. Every finished model is first written
to its own small part file in the journal folder ``<pool>.parts/`` (atomically, one
``os.replace`` each), so a SIGKILL loses at most the model being trained. Every
``commit_every`` models, and when a run ends or is interrupted, the journal is merged into the
pool through ``fpt.storage.atomic_path(copy_existing=True)`` and then deleted. Opening a
``PoolWriter`` on an existing pool first merges any journal left by a crash; resume then skips
every model already present. ``Pool`` (the read side) sees merged models only and reports how
many are still waiting in a journal (``pending``).
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from fpt.errors import ConfigError, StoreError
from fpt.storage import atomic_path, init_store, open_store, store_lock
from fpt.synth.nets import build_model, fingerprint
from fpt.synth.space import ArchSpec, parse_arch_id
from fpt.synth.train import ModelRecord, load_state

POOL_KIND = "pool"
PART_KIND = "pool-part"
POOL_SCHEMA = 1
COMMIT_EVERY = 16

__all__ = ["Pool", "PoolWriter", "ModelRecord", "fingerprint", "merge_pools", "journal_dir",
           "POOL_KIND", "POOL_SCHEMA"]

_RECORD_FIELDS = [f.name for f in fields(ModelRecord) if f.name != "extra"]
_OPTIONAL_FIELDS = {"group", "baseline_loss"}  # added after pools were written
AUTO_GROUP = 16  # models per launch on a GPU: small nets leave a GPU idle one at a time


def journal_dir(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".parts")


def _part_name(mid: str) -> str:
    return mid.replace("/", "__") + ".h5"


def _write_model(root: h5py.Group, state: dict[str, np.ndarray], rec: ModelRecord) -> None:
    g = root.require_group("models").create_group(rec.model_id)
    for k, v in rec.to_attrs().items():
        g.attrs[k] = v
    w = g.create_group("weights")
    for name, arr in state.items():
        w.create_dataset(name, data=np.asarray(arr))


def _read_record(g: h5py.Group) -> ModelRecord:
    vals = {}
    for name in _RECORD_FIELDS:
        if name not in g.attrs and name in _OPTIONAL_FIELDS:
            continue  # written before the field existed: its default holds
        v = g.attrs[name]
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, np.generic):
            v = v.item()
        vals[name] = v
    return ModelRecord(**vals)


def _list_models(f: h5py.File) -> list[str]:
    if "models" not in f:
        return []
    out = []
    for arch, grp in f["models"].items():
        out.extend(f"{arch}/{s}" for s in grp.keys())
    return sorted(out)


def _config_of(f: h5py.File) -> dict:
    raw = f.attrs.get("config", "{}")
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)


#: settings that change speed or float rounding only; pools differing in them may be resumed / merged
_NOT_COMPARED = ("amp", "channels_last")


def _comparable(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in _NOT_COMPARED}


def _pending_parts(path: Path) -> list[Path]:
    d = journal_dir(path)
    return sorted(d.glob("*.h5")) if d.is_dir() else []


class Pool:
    """Read side of a pool: lazy (records and weights are read on demand), LRU-cached loads.

    Safe across ``fork`` (DataLoader workers): the HDF5 handle is reopened in a new process.
    """

    def __init__(self, path: Path, cache_size: int = 256):
        self.path = Path(path)
        self.cache_size = cache_size
        self._f: h5py.File | None = None
        self._pid = -1
        f = self._file()
        self.model_ids: list[str] = _list_models(f)
        self.config: dict = _config_of(f)
        self._records: dict[str, ModelRecord] = {}
        self._cache: OrderedDict[tuple[str, str], nn.Module] = OrderedDict()

    @classmethod
    def open(cls, path: str | Path, cache_size: int = 256) -> "Pool":
        return cls(Path(path), cache_size)

    def _file(self) -> h5py.File:
        if self._f is None or self._pid != os.getpid():
            self._f = open_store(self.path, POOL_KIND, POOL_SCHEMA, "r")
            self._pid = os.getpid()
        return self._f

    def close(self) -> None:
        if self._f is not None and self._pid == os.getpid():
            self._f.close()
        self._f = None
        self._cache.clear()

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.model_ids)

    def __contains__(self, mid: str) -> bool:
        return mid in set(self.model_ids)

    @property
    def pending(self) -> int:
        """Finished models waiting in a crash journal (merged by the next writer / resume)."""
        return len(_pending_parts(self.path))

    def _group(self, mid: str) -> h5py.Group:
        try:
            return self._file()["models"][mid]
        except KeyError:
            raise StoreError(f"no model {mid!r} in this pool", path=self.path,
                             hint="list them with 'fpt synth info POOL --models'") from None

    def record(self, mid: str) -> ModelRecord:
        rec = self._records.get(mid)
        if rec is None:
            rec = self._records[mid] = _read_record(self._group(mid))
        return rec

    def records(self) -> list[ModelRecord]:
        return [self.record(m) for m in self.model_ids]

    def spec(self, mid: str) -> ArchSpec:
        return parse_arch_id(self.record(mid).arch)

    def state(self, mid: str) -> dict[str, np.ndarray]:
        w = self._group(mid)["weights"]
        return {k: w[k][()] for k in w.keys()}

    def load(self, mid: str, device: str | torch.device = "cpu") -> nn.Module:
        """The model in eval mode on ``device`` (LRU-cached; do not train the returned module)."""
        key = (mid, str(device))
        m = self._cache.get(key)
        if m is not None:
            self._cache.move_to_end(key)
            return m
        rec = self.record(mid)
        model = build_model(parse_arch_id(rec.arch), int(rec.width), int(rec.kernel))
        try:
            load_state(model, self.state(mid))
        except RuntimeError as exc:
            raise StoreError(f"weights of {mid} do not fit its architecture", path=self.path) from exc
        model = model.to(device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self._cache[key] = model
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return model


def _merge_parts_into(tmp: Path, parts: Iterable[Path], config: dict | None) -> list[str]:
    """Copy part files' model groups into the pool at ``tmp`` (created if missing)."""
    added = []
    with h5py.File(tmp, "a") as f:
        if "fpt_kind" not in f.attrs:
            init_store(f, POOL_KIND, POOL_SCHEMA)
            f.attrs["config"] = json.dumps(config or {}, sort_keys=True)
        models = f.require_group("models")
        for part in parts:
            try:
                with h5py.File(part, "r") as pf:
                    for mid in _list_models(pf):
                        if mid in models:
                            continue  # merged before a crash, part not yet deleted
                        arch = models.require_group(mid.split("/")[0])
                        pf.copy(pf["models"][mid], arch, name=mid.split("/")[1])
                        added.append(mid)
            except OSError:
                continue  # a torn part cannot exist (atomic), but never fail a merge on one
    return added


class PoolWriter:
    """Append trained models to a pool with crash safety (see module docstring).

    ``config`` (JSON-able) is stored in a new pool and must equal an existing pool's config,
    so a resume never mixes models trained on different crops or settings.
    """

    def __init__(self, path: str | Path, config: dict, commit_every: int = COMMIT_EVERY):
        self.path = Path(path)
        self.config = json.loads(json.dumps(config, sort_keys=True))
        self.commit_every = max(1, commit_every)
        self._new: list[Path] = []
        self.done: set[str] = set()
        if self.path.exists():
            with open_store(self.path, POOL_KIND, POOL_SCHEMA, "r") as f:
                existing = _config_of(f)
                self.done = set(_list_models(f))
            existing, wanted = _comparable(existing), _comparable(self.config)
            if existing != wanted:
                diff = sorted(k for k in set(existing) | set(wanted) if existing.get(k) != wanted.get(k))
                raise ConfigError(
                    f"this pool was built with other settings ({', '.join(diff)} differ)",
                    hint="use the same --size/--width/--images as before, or a new --out",
                )
        self._remove_stale_temps()
        self.flush(all_parts=True)

    def _remove_stale_temps(self) -> None:
        """Temp files of a writer killed mid-commit (SIGKILL cannot clean up); never the live file."""
        with store_lock(self.path):
            for tmp in self.path.parent.glob(f".{self.path.name}.*.tmp"):
                tmp.unlink(missing_ok=True)

    def __enter__(self) -> "PoolWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.flush(all_parts=True)

    def add(self, state: dict[str, np.ndarray], rec: ModelRecord) -> None:
        """Durably journal one finished model; merge into the pool every ``commit_every``."""
        jd = journal_dir(self.path)
        target = jd / _part_name(rec.model_id)
        for attempt in range(3):
            try:
                jd.mkdir(parents=True, exist_ok=True)
                with atomic_path(target) as tmp:
                    with h5py.File(tmp, "w") as f:
                        init_store(f, PART_KIND, POOL_SCHEMA)
                        _write_model(f, state, rec)
                break
            except FileNotFoundError:
                # another writer of this pool (torchrun rank, --shard job) removed the empty
                # journal folder between our mkdir and our write: make it again
                if attempt == 2:
                    raise
        self._new.append(target)
        self.done.add(rec.model_id)
        if len(self._new) >= self.commit_every:
            self.flush()

    def flush(self, all_parts: bool = False) -> list[str]:
        """Merge journalled models into the pool (atomic replace) and delete their parts."""
        parts = _pending_parts(self.path) if all_parts else list(self._new)
        if not parts:
            # Nothing to add: in particular a new pool is not created until its first model is
            # done, so a build that fails early leaves no empty pool locking in its settings.
            return []
        with store_lock(self.path):
            with atomic_path(self.path, copy_existing=True) as tmp:
                added = _merge_parts_into(tmp, parts, self.config)
            for p in parts:
                p.unlink(missing_ok=True)
        self._new.clear()
        jd = journal_dir(self.path)
        if jd.is_dir() and not any(jd.iterdir()):
            try:
                jd.rmdir()
            except OSError:
                pass  # another writer of this pool has just journalled a model into it
        self.done.update(added)
        return added


def merge_pools(out: str | Path, inputs: list[str | Path], *, force: bool = False) -> list[str]:
    """Join shard pools into ``out``. Configs must agree; a model id may appear only once."""
    out = Path(out)
    if not inputs:
        raise ConfigError("nothing to merge", hint="give one or more shard pool files")
    if out.exists() and not force:
        raise ConfigError(f"{out} exists", hint="choose a new output file (or pass --force to overwrite)")
    config, seen = None, {}
    for p in inputs:
        with open_store(p, POOL_KIND, POOL_SCHEMA, "r") as f:
            c = _config_of(f)
            if config is None:
                config = c
            elif _comparable(c) != _comparable(config):
                raise ConfigError(f"{p} was built with other settings than {inputs[0]}",
                                  hint="shards must share --size, --width, --kernel and the image set")
            for mid in _list_models(f):
                if mid in seen:
                    raise StoreError(f"model {mid} is in both {seen[mid]} and {p}",
                                     hint="shards must be disjoint (--shard i/n with the same n)")
                seen[mid] = p
        if _pending_parts(Path(p)):
            raise StoreError("this shard has unmerged finished models in its journal", path=p,
                             hint="rerun its 'fpt synth' command to resume and finish it")
    with store_lock(out), atomic_path(out) as tmp:
        with h5py.File(tmp, "w") as f:
            init_store(f, POOL_KIND, POOL_SCHEMA)
            f.attrs["config"] = json.dumps(config, sort_keys=True)
            models = f.create_group("models")
            for p in inputs:
                with h5py.File(p, "r") as src:
                    for mid in _list_models(src):
                        arch = models.require_group(mid.split("/")[0])
                        src.copy(src["models"][mid], arch, name=mid.split("/")[1])
    return sorted(seen)


# ------------------------------------------------------------------------------ building


def pool_config(cfg, bank) -> dict:
    """What must agree between a pool, its resumes and its shards (not the device / workers)."""
    from dataclasses import asdict

    c = asdict(cfg)
    c.pop("amp", None)
    c.pop("channels_last", None)  # a speed lever (float rounding only), not a model setting
    if not c.get("patience"):
        # plateau rule off: leave its keys out so pools built before it existed still resume / merge
        c.pop("patience", None)
        c.pop("plateau_rel", None)
    c["crops"] = bank.digest()
    from fpt.synth.nets import IO_RANGE

    c["io"] = IO_RANGE
    return c


def build_pool(out: str | Path, jobs, bank, cfg, *, device="cpu", workers: int = 1, group: int = 0,
               commit_every: int = COMMIT_EVERY, on_start=None, on_done=None) -> tuple[list[ModelRecord], int]:
    """Train every job not yet in ``out`` and store it; returns (records trained now, skipped).

    Resumable: models already in the pool (or in its crash journal) are skipped. ``group``: seeds
    of one architecture trained together (``fpt.synth.many``); 0 = ``AUTO_GROUP`` on CUDA, 1
    elsewhere (on CPU one model per process and core is as fast: benchmarks/bench_synth.py).
    """
    if not group:
        group = AUTO_GROUP if torch.device(device).type == "cuda" else 1
    from fpt.synth.many import train_many
    from fpt.synth.train import model_id

    with PoolWriter(out, pool_config(cfg, bank), commit_every=commit_every) as writer:
        todo = [(a, s) for a, s in jobs if model_id(a, s) not in writer.done]
        skipped = len(jobs) - len(todo)
        if on_start:
            on_start(len(todo), skipped)
        trained = []
        for state, rec in train_many(todo, bank, cfg, device=device, workers=workers, group=group):
            writer.add(state, rec)
            trained.append(rec)
            if on_done:
                on_done(rec)
    return trained, skipped


def summarise(records: list[ModelRecord], by: str = "family") -> list[dict]:
    """Per-group rows: models, reached-target share, loss / steps / wall-time quantiles.

    ``by``: "family" (fd / grid), or a factor name K, L, S, U, A, N, D.
    """
    from fpt.synth.space import factors
    from fpt.synth.train import learned

    groups: dict[str, list[ModelRecord]] = {}
    for r in records:
        key = r.family if by == "family" else factors(r.arch).get(by, "-")
        if key == "-":
            key = r.family  # grid generators have no FD factors: one row for them
        groups.setdefault(key, []).append(r)
    if len(groups) > 1 or not groups:
        groups["all"] = list(records)
    rows = []
    for key, rs in groups.items():
        if not rs:
            continue
        loss = np.array([r.final_loss for r in rs], dtype=np.float64)
        rows.append({
            "group": key, "models": len(rs), "archs": len({r.arch for r in rs}),
            "reached": float(np.mean([r.reached_target for r in rs])),
            "learned": float(np.mean([learned(r) for r in rs])),
            "loss_p10": float(np.nanquantile(loss, 0.1)), "loss_p50": float(np.nanquantile(loss, 0.5)),
            "loss_p90": float(np.nanquantile(loss, 0.9)),
            "steps_p50": float(np.median([r.steps for r in rs])),
            "wall_s_p50": float(np.median([r.wall_s for r in rs])),
            "wall_s_total": float(np.sum([r.wall_s for r in rs])),
        })
    return rows


def write_fingerprinted(pool_path: str | Path, model: str, images: Iterable[str | Path], out: str | Path, *,
                        seed: int = 0, device: str | torch.device = "cpu",
                        on_skip=None) -> int:
    """Write each readable image as the pooled ``model`` would make it (FD / latent decoder: its
    reconstruction; grid: image + its noise) to ``out/<stem>.<model id>.png``, atomically.
    Unreadable inputs go to ``on_skip(reason)``. Returns how many PNGs were written."""
    from PIL import Image

    from fpt.images import LoadFailure, find_images, iter_images

    files = find_images(list(images))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    with Pool.open(pool_path) as p:
        spec = p.spec(model)
        net = p.load(model, device)
        g = torch.Generator(device=device).manual_seed(seed)
        for path, img in iter_images(files):
            if isinstance(img, LoadFailure):
                if on_skip:
                    on_skip(img.reason)
                continue
            y = fingerprint(net, spec, img.unsqueeze(0).to(device), g)[0]
            arr = (y.permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
            with atomic_path(out / f"{path.stem}.{model.replace('/', '_')}.png") as tmp:
                Image.fromarray(arr).save(tmp, format="PNG")
            written += 1
    return written
