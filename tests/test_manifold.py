"""ManiFPT core: spaces, manifold store, exact chunked nearest neighbour, artifacts (paper 002)."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from fpt.errors import ConfigError, EmptyInputError, StoreError
from fpt.manifold import (
    Manifold,
    Projector,
    SpaceSpec,
    build_manifold,
    fixed_view,
    log_magnitude,
    nearest_in_array,
)
from fpt.manifold.store import DEFAULT_CHUNK_ROWS
from fpt.representations.artifact import ArtifactRepresentation


def _write_images(folder, n, rng, size=(40, 48)):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        arr = (rng.random((size[0] + (i % 3), size[1], 3)) * 255).astype(np.uint8)
        p = folder / f"img{i:03d}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


@pytest.fixture
def real_dir(tmp_path, rng):
    d = tmp_path / "real"
    _write_images(d, 24, rng)
    return d


@pytest.fixture
def manifold_file(tmp_path, real_dir):
    out = tmp_path / "m.h5"
    build_manifold(real_dir, out, [SpaceSpec("rgb", size=32), SpaceSpec("freq", size=32)], batch_size=10)
    return out


# ---------------------------------------------------------------- spaces


def test_fixed_view_crop_is_exact_pixels_and_pads_small_images():
    img = torch.rand(3, 40, 50)
    v, padded = fixed_view(img, 32, "crop")
    assert not padded and v.shape == (3, 32, 32)
    assert torch.equal(v, img[:, 4:36, 9:41])
    small, padded = fixed_view(torch.rand(3, 20, 20), 32, "crop")
    assert padded and small.shape == (3, 32, 32)
    r, padded = fixed_view(torch.rand(3, 40, 80), 32, "resize")
    assert r.shape == (3, 32, 32) and not padded


def test_log_magnitude_known_answer():
    # Constant image c: DFT is c*HW at DC and 0 elsewhere; normalised by sqrt(HW).
    c, s, eps = 0.25, 16, 1e-4
    spec = log_magnitude(torch.full((1, 3, s, s), c), eps)
    assert spec[0, :, 0, 0] == pytest.approx(math.log(c * s + eps), rel=1e-5)
    rest = spec[0, :, 1:, :]
    assert torch.allclose(rest, torch.full_like(rest, math.log(eps)), atol=1e-3)


def test_spacespec_validation_and_round_trip():
    spec = SpaceSpec("freq", size=48, fit="resize")
    assert SpaceSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ConfigError):
        SpaceSpec("pixels")
    with pytest.raises(ConfigError):
        SpaceSpec("rgb", fit="stretch")


# ---------------------------------------------------------------- search


def _brute(q, r):
    d = ((q[:, None, :].astype(np.float64) - r[None, :, :]) ** 2).sum(-1)
    return d.argmin(1), d.min(1)


def test_chunked_search_equals_brute_force(rng):
    refs = rng.normal(size=(103, 20)).astype(np.float32)
    q = rng.normal(size=(17, 20)).astype(np.float32)
    idx, d = _brute(q, refs)
    for chunk in (1, 7, 50, 1000):
        nb = nearest_in_array(q, refs, chunk_rows=chunk)
        assert np.array_equal(nb.index, idx)
        assert np.allclose(nb.sq_distance, d, rtol=1e-12)


def test_search_is_exact_where_float32_expansion_is_not(rng):
    # Large offset + tiny differences: |q|^2 - 2qr + |r|^2 in float32 cannot separate these
    # candidates; the exact float64 re-ranking must still find the true nearest row.
    base = np.full(512, 100.0)
    refs = np.stack([base + rng.normal(size=512) * 1e-3 for _ in range(6)]).astype(np.float32)
    q = (refs[4].astype(np.float64) + 1e-4).astype(np.float32)[None]
    idx, _ = _brute(q, refs)
    assert nearest_in_array(q, refs).index[0] == idx[0] == 4


def test_duplicates_resolve_to_lowest_index_and_exclusion(rng):
    refs = rng.normal(size=(10, 5)).astype(np.float32)
    refs[7] = refs[2]
    nb = nearest_in_array(refs[[7]], refs)
    assert nb.index[0] == 2 and nb.sq_distance[0] == 0.0
    # leave-one-out: row i may not match itself
    nb = nearest_in_array(refs, refs, exclude=np.arange(10), chunk_rows=3)
    full = ((refs[:, None].astype(np.float64) - refs[None]) ** 2).sum(-1)
    np.fill_diagonal(full, np.inf)
    assert np.array_equal(nb.index, full.argmin(1))


def test_streamed_search_equals_in_memory(manifold_file, rng):
    q = rng.random((5, 3 * 32 * 32)).astype(np.float32)
    with Manifold(manifold_file, memory_budget=0) as m:  # streamed from HDF5 in chunks
        streamed = m.space("rgb").nearest(q, chunk_rows=5)
        assert m.space("rgb")._cache is None
    with Manifold(manifold_file) as m:
        cached = m.space("rgb").nearest(q)
        refs = m.space("rgb").rows(np.arange(m.count))
    assert np.array_equal(streamed.index, cached.index)
    assert np.array_equal(streamed.index, _brute(q, refs)[0])


# ---------------------------------------------------------------- build / store


def test_build_writes_every_readable_image_and_skips_bad_ones(tmp_path, real_dir):
    (real_dir / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "m.h5"
    rep = build_manifold(real_dir, out, [SpaceSpec("rgb", size=32), SpaceSpec("freq", size=32)], batch_size=5)
    assert rep.count == 24 and len(rep.failed) == 1 and "broken.png" in rep.failed[0][0]
    with Manifold(out) as m:
        assert m.count == 24 and sorted(m.spaces) == ["freq", "rgb"]
        assert m.space("rgb").dim == 3 * 32 * 32
        assert m.space("freq").spec == SpaceSpec("freq", size=32)
        assert m.space("rgb").calib_nn.size == 24 and np.all(m.space("rgb").calib_nn > 0)
        assert m.space("freq").pixels(0).shape == (3, 32, 32)
    with h5py.File(out) as f:
        ds = f["spaces/rgb/features"]
        # chunked (~1 MiB) and resizable: written and read in streams, never as one block
        assert ds.maxshape[0] is None and ds.chunks[0] * ds.shape[1] * 4 <= 1 << 20


def test_build_interrupted_leaves_previous_manifold_intact(tmp_path, real_dir, manifold_file):
    before = manifold_file.read_bytes()

    def boom(done, total):
        if done == 12:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_manifold(real_dir, manifold_file, [SpaceSpec("rgb", size=16)], on_progress=boom)
    assert manifold_file.read_bytes() == before
    assert not [p for p in manifold_file.parent.iterdir() if p.name.endswith(".tmp")]


def test_bad_stores_and_inputs(tmp_path):
    with pytest.raises(StoreError, match="no such manifold"):
        Manifold(tmp_path / "missing.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(StoreError, match="not an HDF5"):
        Manifold(junk)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.attrs["fpt_kind"] = "gallery"
        f.attrs["fpt_schema"] = 1
    with pytest.raises(StoreError, match="gallery"):
        Manifold(other)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyInputError):
        build_manifold(tmp_path / "empty", tmp_path / "x.h5", [SpaceSpec("rgb")])
    with pytest.raises(ConfigError):
        build_manifold(tmp_path, tmp_path / "x.h5", [SpaceSpec("rgb"), SpaceSpec("rgb")])


# ---------------------------------------------------------------- artifacts


def test_member_projects_to_itself_with_zero_artifact(manifold_file, real_dir):
    from fpt.images import load_image

    imgs = [load_image(real_dir / "img005.png"), load_image(real_dir / "img017.png")]
    with Manifold(manifold_file) as m:
        for space in ("rgb", "freq"):
            res = Projector(m, space).project(imgs)
            assert [r.nearest_path for r in res] == [str(real_dir / "img005.png"), str(real_dir / "img017.png")]
            for r in res:
                assert r.distance == 0.0
                assert not np.any(r.artifact)
                assert r.artifact.shape == (3, 32, 32)


def test_artifact_sign_convention_is_query_minus_nearest(manifold_file, real_dir):
    from fpt.images import load_image

    img = load_image(real_dir / "img003.png")
    shifted = (img + 0.01).clamp(0, 1)
    with Manifold(manifold_file) as m:
        p = Projector(m, "rgb").project([shifted])[0]
        ref = m.space("rgb").rows([p.nearest_index])[0].reshape(3, 32, 32)
        view, _ = fixed_view(shifted, 32)
        assert np.allclose(p.artifact, view.numpy() - ref, atol=1e-7)
        assert p.nearest_path.endswith("img003.png")
        assert p.artifact.mean() > 0  # brighter query -> positive artifact
        assert p.distance == pytest.approx(float(np.linalg.norm(p.artifact)), rel=1e-5)
        assert p.percentile is not None and p.percentile < 50  # closer than real images are to each other


def test_artifact_representation_protocol(manifold_file, real_dir):
    from fpt.images import load_image

    rep = ArtifactRepresentation(manifold_file, "freq", device="cpu")
    assert rep.name == "artifact-freq"
    x = rep.embed_images([load_image(real_dir / "img000.png"), torch.rand(3, 36, 36)])
    assert x.shape == (2, 3 * 32 * 32) and x.dtype == np.float32
    assert not np.any(x[0]) and np.any(x[1])
    rep.close()
    with pytest.raises(ConfigError, match="no 'feat' space"):
        ArtifactRepresentation(manifold_file, "feat", device="cpu")


def test_registered_in_eval_registry(manifold_file):
    from fpt.representations import build_representation

    rep = build_representation("artifact-rgb", manifold=str(manifold_file), device="cpu", seed=0)
    assert rep.name == "artifact-rgb"
    with pytest.raises(ConfigError, match="needs a manifold"):
        build_representation("artifact-rgb", device="cpu")


def test_default_chunk_is_sane():
    assert DEFAULT_CHUNK_ROWS >= 256


def test_write_manifold_from_arrays(tmp_path, rng):
    from fpt.manifold.build import write_manifold

    feats = rng.random((12, 3 * 8 * 8)).astype(np.float32)
    out = write_manifold(tmp_path / "w.h5", {"rgb": (SpaceSpec("rgb", size=8), feats)}, [f"p{i}" for i in range(12)])
    with Manifold(out) as m:
        assert m.count == 12 and m.paths[3] == "p3"
        nb = m.space("rgb").nearest(feats[[3, 9]])
        assert list(nb.index) == [3, 9] and np.all(nb.sq_distance == 0)
        assert m.space("rgb").calib_nn.size == 12
    with pytest.raises(ConfigError):
        write_manifold(tmp_path / "bad.h5", {"rgb": (SpaceSpec("rgb", size=8), feats)}, ["only-one"])


def test_artifact_through_extractor(manifold_file, real_dir):
    from fpt.images import load_image
    from fpt.representations import build_representation

    rep = build_representation("artifact-rgb-fpt", manifold=str(manifold_file), device="cpu")
    assert rep.name == "artifact-rgb-fpt"
    x = rep.embed_images([load_image(real_dir / "img001.png"), torch.rand(3, 40, 40)])
    assert x.shape[0] == 2 and np.isfinite(x).all()
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-4)


def test_feat_space_with_own_extractor_and_mismatch(tmp_path, real_dir):
    """feat space: crop size and sha256 come from the extractor; another extractor is refused."""
    from fpt.errors import ExtractorMismatchError
    from fpt.extractor.checkpoint import save_extractor
    from fpt.extractor.net import build_net
    from fpt.images import load_image
    from fpt.manifold.spaces import resolve_spec

    torch.manual_seed(0)
    ex1, ex2 = tmp_path / "one.pt", tmp_path / "two.pt"
    save_extractor(ex1, build_net(backbone="resnet10", width=0.125, embedding_dim=16, crop_size=32))
    save_extractor(ex2, build_net(backbone="resnet10", width=0.125, embedding_dim=16, crop_size=32))
    spec = resolve_spec("feat", None, "crop", str(ex1), torch.device("cpu"))
    assert spec.size == 32 and len(spec.extractor_sha256) == 64
    with pytest.raises(ConfigError, match="32px"):
        resolve_spec("feat", 48, "crop", str(ex1), torch.device("cpu"))
    out = tmp_path / "feat.h5"
    build_manifold(real_dir, out, [spec])
    with Manifold(out) as m:
        p = Projector(m, "feat").project([load_image(real_dir / "img002.png")])[0]
        # a network is reproducible only to float rounding across batch sizes (not bit-exact)
        assert p.nearest_path.endswith("img002.png") and p.distance < 1e-5 and p.artifact.shape == (16,)
        assert m.space("feat").pixels(0).shape == (3, 32, 32)
    # the same file read with a different extractor: refused, not silently compared
    import h5py

    with h5py.File(out, "a") as f:
        f["spaces/feat"].attrs["spec"] = SpaceSpec.from_json(f["spaces/feat"].attrs["spec"]).__class__(
            "feat", size=32, extractor=str(ex2), extractor_sha256=spec.extractor_sha256).to_json()
    with Manifold(out) as m, pytest.raises(ExtractorMismatchError):
        Projector(m, "feat")
