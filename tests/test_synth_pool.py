"""Pool store: lazy reads, crash safety (SIGKILL mid-commit), resume, shard + merge."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from fpt.errors import ConfigError, StoreError
from fpt.synth.pool import Pool, build_pool, fingerprint, journal_dir, merge_pools
from fpt.synth.space import fd_space, grid_space
from fpt.synth.train import CropBank, TrainConfig, plan_jobs, shard_jobs

REPO = Path(__file__).resolve().parents[1]




def tiny_bank() -> CropBank:
    return CropBank(torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(0)))


TINY = TrainConfig(size=16, width=4, batch=4, max_steps=2, val_batch=4)


def tiny_jobs():
    return plan_jobs(fd_space()[::60], [0], grid_space([3]), [0, 1])  # 5 FD + 2 grid


def test_build_read_and_resume(tmp_path):
    out = tmp_path / "pool.h5"
    jobs = tiny_jobs()
    trained, skipped = build_pool(out, jobs, tiny_bank(), TINY, commit_every=3)
    assert len(trained) == 7 and skipped == 0
    assert not journal_dir(out).exists()
    with Pool.open(out) as pool:
        assert len(pool) == 7 and pool.pending == 0
        mid = "grid-D3/s001"
        rec = pool.record(mid)
        assert (rec.arch, rec.family, rec.seed, rec.steps, rec.width) == ("grid-D3", "grid", 1, 2, 4)
        m = pool.load(mid)
        assert m is pool.load(mid)  # cached
        assert not m.training and not any(p.requires_grad for p in m.parameters())
        x = torch.rand(2, 3, 24, 24)
        y = fingerprint(m, pool.spec(mid), x, torch.Generator().manual_seed(0))
        assert y.shape == x.shape
        fd = pool.model_ids[0]
        assert fingerprint(pool.load(fd), pool.spec(fd), x).shape == x.shape
        with pytest.raises(StoreError):
            pool.record("K1-L1-post-nearest-none-none/s099")
    again, skipped = build_pool(out, jobs, tiny_bank(), TINY)
    assert again == [] and skipped == 7
    with pytest.raises(ConfigError):  # a resume must use the same settings
        build_pool(out, jobs, tiny_bank(), TrainConfig(size=16, width=8, batch=4, max_steps=2))


def test_bad_pool_files(tmp_path):
    with pytest.raises(StoreError):
        Pool.open(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(StoreError):
        Pool.open(tmp_path / "text.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.attrs["fpt_kind"] = "gallery"
        f.attrs["fpt_schema"] = 1
    with pytest.raises(StoreError, match="gallery"):
        Pool.open(tmp_path / "other.h5")


CHILD = textwrap.dedent(
    """
    import sys, time, torch
    torch.set_num_threads(1)
    from fpt.synth import pool as P
    from fpt.synth.train import CropBank, TrainConfig, plan_jobs
    from fpt.synth.space import fd_space, grid_space
    bank = CropBank(torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
    cfg = TrainConfig(size=16, width=4, batch=4, max_steps=2, val_batch=4)
    jobs = plan_jobs(fd_space()[::60], [0], grid_space([3]), [0, 1])
    orig, calls = P._merge_parts_into, [0]
    def slow_merge(tmp, parts, config):
        calls[0] += 1
        added = orig(tmp, parts, config)
        if calls[0] == 2:  # 1: first commit (3 models; creates the pool), 2: second commit -> hang mid-write
            print("MERGING", flush=True)
            time.sleep(120)
        return added
    P._merge_parts_into = slow_merge
    P.build_pool(sys.argv[1], jobs, bank, cfg, commit_every=3,
                 on_done=lambda r: print("DONE", r.model_id, flush=True))
    """
)


def test_sigkill_mid_commit_loses_no_finished_model(tmp_path):
    out = tmp_path / "pool.h5"
    env = dict(os.environ, FPT_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    done = []
    try:
        for line in proc.stdout:
            if line.startswith("DONE"):
                done.append(line.split()[1])
            if line.startswith("MERGING"):
                break
        # the writer is now inside a commit: a half-written temp copy of the pool exists
        assert list(tmp_path.glob(".pool.h5.*.tmp"))
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    # 6 models finished: 5 reported, the 6th journalled and being committed when killed
    assert len(done) == 5
    with Pool.open(out) as pool:  # the live file is intact: the first commit is in it
        assert len(pool) == 3 and set(pool.model_ids) <= set(done)
        assert pool.pending == 3  # the other 3 finished models are safe in the journal
    trained, skipped = build_pool(out, tiny_jobs(), tiny_bank(), TINY)
    assert skipped == 6 and len(trained) == 1  # resume merged the journal and skipped all 6
    assert not list(tmp_path.glob(".pool.h5.*.tmp"))
    with Pool.open(out) as pool:
        assert set(done) < set(pool.model_ids) and len(pool) == 7 and pool.pending == 0
        for mid in done:
            pool.load(mid)  # every finished model readable


def _weights(path):
    with Pool.open(path) as p:
        return {m: p.state(m) for m in p.model_ids}, {m: p.record(m) for m in p.model_ids}


def test_shards_merged_equal_one_run(tmp_path):
    jobs = tiny_jobs()
    build_pool(tmp_path / "one.h5", jobs, tiny_bank(), TINY)
    for i in range(2):
        build_pool(tmp_path / f"s{i}.h5", shard_jobs(jobs, i, 2), tiny_bank(), TINY)
    ids = merge_pools(tmp_path / "merged.h5", [tmp_path / "s0.h5", tmp_path / "s1.h5"])
    assert len(ids) == 7
    w1, r1 = _weights(tmp_path / "one.h5")
    w2, r2 = _weights(tmp_path / "merged.h5")
    assert w1.keys() == w2.keys()
    for m in w1:
        assert all(np.array_equal(w1[m][k], w2[m][k]) for k in w1[m])
        assert (r1[m].steps, r1[m].final_loss) == (r2[m].steps, r2[m].final_loss)
    with pytest.raises(StoreError):  # overlapping shards
        merge_pools(tmp_path / "bad.h5", [tmp_path / "s0.h5", tmp_path / "one.h5"])
    with pytest.raises(ConfigError):  # output exists
        merge_pools(tmp_path / "merged.h5", [tmp_path / "s0.h5"])
    build_pool(tmp_path / "w8.h5", jobs[:1], tiny_bank(), TrainConfig(size=16, width=8, batch=4, max_steps=2))
    with pytest.raises(ConfigError):  # different settings
        merge_pools(tmp_path / "bad2.h5", [tmp_path / "s1.h5", tmp_path / "w8.h5"])


def test_pool_survives_fork(tmp_path):
    out = tmp_path / "pool.h5"
    build_pool(out, tiny_jobs()[:2], tiny_bank(), TINY)
    pool = Pool.open(out)
    pool.load(pool.model_ids[0])
    pid = os.fork()
    if pid == 0:  # child: must reopen its own handle and load fine
        try:
            pool._cache.clear()
            pool.load(pool.model_ids[1])
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    pool.close()


def test_failed_build_leaves_no_pool(tmp_path):
    """A build that fails before its first model is stored creates no (0-model) pool file."""
    out = tmp_path / "pool.h5"

    class Boom(RuntimeError):
        pass

    def on_start(todo, skipped):
        raise Boom

    with pytest.raises(Boom):
        build_pool(out, tiny_jobs(), tiny_bank(), TINY, on_start=on_start)
    assert not out.exists()
