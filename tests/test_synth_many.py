"""Many synthetic models per launch (fpt.synth.many): the same models as one at a time.

The GPU path of ``fpt synth`` stacks the seeds of an architecture into one ``torch.func.vmap``
launch (with AMP on CUDA). These tests run it on CPU at tiny scale against ``train_one``.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from fpt.errors import ConfigError
from fpt.synth.many import group_jobs, train_group
from fpt.synth.pool import Pool, build_pool
from fpt.synth.space import parse_arch_id
from fpt.synth.train import CropBank, TrainConfig, load_state, plan_jobs, train_one
from fpt.synth.nets import build_model

BANK = CropBank(torch.rand(32, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
CFG = TrainConfig(size=16, width=4, batch=4, max_steps=20, target=0.0, val_batch=8, channels_last=False)
PROBE = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(9))
SEEDS = [0, 1, 2]


def _outputs(spec, state):
    net = load_state(build_model(spec, CFG.width, CFG.kernel), state).eval()
    with torch.no_grad():
        if spec.is_grid:
            z = torch.randn(net.noise_shape(2, 16, 16), generator=torch.Generator().manual_seed(3))
            return net(z)
        return net(PROBE)


# BatchNorm (running statistics), InstanceNorm, a grid generator (noise input), a VQ latent
# decoder (auxiliary codebook loss) and a GroupNorm / SiLU residual latent decoder
ARCHS = ["K2-L1-post-nearest-relu-bn", "K1-L2-pre-deconv-tanh-in", "grid-D3",
         "LD-f8-z4-shuffle-plain-none-gelu-vq", "LD-f8-z4-nearest-res-gn-silu-ae"]


@pytest.mark.parametrize("arch", ARCHS)
def test_a_group_trains_the_models_train_one_trains(arch):
    spec = parse_arch_id(arch)
    alone = [train_one(spec, s, BANK, CFG) for s in SEEDS]
    together = train_group(spec, SEEDS, BANK, CFG)
    # How far float rounding alone moves a trained model: the one-model path itself, run with the
    # other memory format. Adam turns rounding noise in ~0 gradients (a conv bias before
    # BatchNorm has a zero gradient) into +-lr steps, so BatchNorm models differ most.
    other_format = train_one(spec, 0, BANK, dataclasses.replace(CFG, channels_last=True))
    rounding = float((_outputs(spec, other_format[0]) - _outputs(spec, alone[0][0])).abs().max())
    tol = max(2e-3, 3 * rounding)
    loss_rel = max(1e-3, 3 * abs(other_format[1].final_loss / alone[0][1].final_loss - 1))
    for (sa, ra), (sb, rb) in zip(alone, together):
        assert rb.model_id == ra.model_id and rb.steps == ra.steps == CFG.max_steps
        assert rb.group == 3 and ra.group == 1
        assert list(sb) == list(sa)  # same state-dict keys, same order: the pool reads either
        assert rb.final_loss == pytest.approx(ra.final_loss, rel=loss_rel)
        np.testing.assert_allclose(_outputs(spec, sb).numpy(), _outputs(spec, sa).numpy(), atol=tol)
    # and that tolerance is far below what separates two seeds' models
    seeds_apart = float((_outputs(spec, together[0][0]) - _outputs(spec, together[1][0])).abs().max())
    assert seeds_apart > 5 * tol


def test_models_leave_the_group_at_their_own_stop_step():
    """A target between the seeds' losses: some stop at the first check, the rest go on to the
    cap — the group drops finished models (with their Adam state) and the rest train on as alone."""
    spec = parse_arch_id("K1-L1-post-nearest-relu-none")
    cfg = dataclasses.replace(CFG, max_steps=30, check_every=10)
    seeds = list(range(6))
    first = sorted(train_one(spec, s, BANK, dataclasses.replace(cfg, max_steps=10))[1].final_loss for s in seeds)
    gap, cut = max((b - a, (a + b) / 2) for a, b in zip(first, first[1:]))
    assert gap > 0.002 * cut  # the set-up separates them clearly (rounding moves losses ~1e-5)
    cfg = dataclasses.replace(cfg, target=cut)
    alone = [train_one(spec, s, BANK, cfg) for s in seeds]
    together = train_group(spec, seeds, BANK, cfg)
    steps = [r.steps for _, r in alone]
    assert 10 in steps and max(steps) > 10  # the case under test: early and late stops
    assert [r.steps for _, r in together] == steps
    assert [r.reached_target for _, r in together] == [r.reached_target for _, r in alone]
    for (sa, ra), (sb, rb) in zip(alone, together):
        assert rb.final_loss == pytest.approx(ra.final_loss, rel=1e-3)
        np.testing.assert_allclose(_outputs(spec, sb).numpy(), _outputs(spec, sa).numpy(), atol=2e-3)


def test_plateau_rule_stops_each_model_in_a_group_as_alone():
    spec = parse_arch_id("K1-L1-post-bilinear-relu-none")
    cfg = dataclasses.replace(CFG, max_steps=200, patience=2, plateau_rel=0.5)  # stops soon on a plateau
    # smooth colour fields: learnable, so the plateau rule (which waits for learning) can act
    low = torch.rand(32, 3, 3, 3, generator=torch.Generator().manual_seed(1))
    smooth = CropBank(torch.nn.functional.interpolate(low, size=(16, 16), mode="bilinear", align_corners=True))
    alone = [train_one(spec, s, smooth, cfg)[1] for s in SEEDS]
    together = [r for _, r in train_group(spec, SEEDS, smooth, cfg)]
    assert all(r.steps < 200 for r in alone)
    assert [r.steps for r in together] == [r.steps for r in alone]


def test_group_jobs_cuts_runs_of_one_architecture():
    a, b = parse_arch_id("K1-L1-post-nearest-none-none"), parse_arch_id("grid-D3")
    jobs = plan_jobs([a], [0, 1, 2], [b], [0, 1])
    chunks = group_jobs(jobs, 2)
    assert [[(j[0].id, j[1]) for j in c] for c in chunks] == [
        [(a.id, 0), (a.id, 1)], [(a.id, 2)], [(b.id, 0), (b.id, 1)]]
    assert group_jobs(jobs, 1) == [[j] for j in jobs]
    with pytest.raises(ConfigError):
        group_jobs(jobs, 0)
    with pytest.raises(ConfigError):
        train_group(a, [0, 0], BANK, CFG)


def test_grouped_pool_round_trip_and_old_pools_read_as_group_1(tmp_path):
    spec = parse_arch_id("K1-L1-post-nearest-none-none")
    out = tmp_path / "pool.h5"
    cfg = dataclasses.replace(CFG, max_steps=3)
    trained, _ = build_pool(out, plan_jobs([spec], [0, 1, 2]), BANK, cfg, group=2)
    assert sorted(r.group for r in trained) == [1, 2, 2]
    with Pool.open(out) as p:
        assert sorted(r.group for r in p.records()) == [1, 2, 2]
        net = p.load("K1-L1-post-nearest-none-none/s001", "cpu")
        assert net(PROBE).shape == PROBE.shape
    with h5py.File(out, "r+") as f:  # a pool written before the field existed
        for seed in range(3):
            del f["models"][f"K1-L1-post-nearest-none-none/s{seed:03d}"].attrs["group"]
    with Pool.open(out) as p:
        assert [r.group for r in p.records()] == [1, 1, 1]


def test_cli_group_option_builds_the_pool(tmp_path):
    rng = np.random.default_rng(0)
    photos = tmp_path / "photos"
    photos.mkdir()
    from PIL import Image

    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    out = tmp_path / "pool.h5"
    cmd = [sys.executable, "-m", "fpt", "--threads", "1", "synth", "--images", str(photos), "--out", str(out),
           "--arch", "K1-L1-post-nearest-relu-none", "--seeds", "3", "--grid-depths", "3", "--grid-seeds", "2",
           "--size", "16", "--width", "4", "--batch", "4", "--max-steps", "3", "--crops", "16",
           "--device", "cpu", "--group", "3", "--json"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["trained"] == 5
    with Pool.open(out) as p:
        assert sorted(r.group for r in p.records()) == [2, 2, 3, 3, 3]
