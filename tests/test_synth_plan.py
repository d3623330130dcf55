"""fpt.synth.plan: the job list `fpt synth` builds, from its options."""

import pytest

from fpt.errors import ConfigError
from fpt.synth.plan import parse_int_list, plan_pool, seed_range


def test_parse_int_list():
    assert parse_int_list("3, 4,5", "--grid-depths") == [3, 4, 5]
    assert parse_int_list("none", "--grid-depths") == [] == parse_int_list("", "x") == parse_int_list(None, "x")
    with pytest.raises(ConfigError, match="bad --blocks 'a,b'"):
        parse_int_list("a,b", "--blocks")


def test_seed_range():
    assert seed_range(3, 5) == [5, 6, 7] and seed_range(0, 2) == []


def test_plan_counts_fd_ld_and_grid_jobs_in_order():
    jobs = plan_pool(arch="K1-L1-post-deconv-relu-*", ld_arch="LD-f8-z4-nearest-res-gn-silu-*", seeds=2,
                     grid_depths="3,4", grid_seeds=1, size=64)
    ids = [f"{a.id}/{s}" for a, s in jobs]
    # 3 FD archs (N = bn / in / none) x 2 seeds, 2 LD archs (ae / vq) x 2 seeds, then 2 grid depths x 1 seed
    assert len(jobs) == 6 + 4 + 2
    assert [a.family for a, _ in jobs] == ["fd"] * 6 + ["ld"] * 4 + ["grid"] * 2
    assert ids[0].startswith("K1-L1-post-deconv-relu-") and ids[-1] == "grid-D4/0"


def test_shards_are_disjoint_and_cover_the_plan():
    kw = dict(arch="K1-*-deconv-*", grid_depths="3,4,5", grid_seeds=2)
    full = plan_pool(**kw)
    parts = [plan_pool(**kw, shard_index=i, shard_count=3) for i in range(3)]
    assert sorted(map(str, sum(parts, []))) == sorted(map(str, full))
    assert sum(map(len, parts)) == len(full)


def test_latent_decoders_need_a_large_enough_crop():
    with pytest.raises(ConfigError, match="latent grid under 4 x 4"):
        plan_pool(arch="none", ld_arch="LD-f16-*", grid_depths="none", size=32)


def test_an_empty_plan_is_an_error_not_a_silent_no_op():
    with pytest.raises(ConfigError, match="nothing to train"):
        plan_pool(arch="none", grid_depths="none")
