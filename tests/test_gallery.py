"""Gallery store: round trips, refusal to mix extractors, locks, atomicity, clean errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from fpt.errors import ExtractorMismatchError, InputError, StoreError
from fpt.gallery import (
    Gallery,
    ModelEntry,
    add_embeddings,
    calibrate,
    calibration_scores,
    default_gallery_path,
    edit_gallery,
    export_csv,
    import_csv,
    load_gallery,
    parse_meta,
    remove_model,
    rename_model,
)

REPO = Path(__file__).resolve().parents[1]
SHA_A, SHA_B = "a" * 64, "b" * 64


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _add(g, name, emb, prefix=None, sha=SHA_A, meta=None):
    n = len(emb)
    prefix = prefix or name
    return add_embeddings(g, name, emb, [f"/img/{prefix}{i}.png" for i in range(n)],
                          [f"{prefix}-{i}" for i in range(n)], np.zeros(n, bool), sha, emb.shape[1], meta)


def _clustered(rng, centres, n=6, noise=0.05):
    return {name: _unit(c + rng.normal(0, noise, (n, c.size))) for name, c in centres.items()}


def test_round_trip_and_fingerprint(tmp_path, rng):
    path = tmp_path / "g.h5"
    emb = _unit(rng.normal(size=(5, 8))).astype(np.float32)
    with edit_gallery(path, create=True) as g:
        r = _add(g, "sd/1.4 (img2img)", emb, meta={"source": "hf"})
    assert (r.added, r.duplicates, r.total) == (5, 0, 5)
    g2 = load_gallery(path)
    m = g2.get("sd/1.4 (img2img)")  # slashes and spaces survive
    np.testing.assert_allclose(m.embeddings, emb, atol=1e-6)
    np.testing.assert_allclose(m.fingerprint, _unit(emb.mean(0)), atol=1e-6)
    assert m.meta == {"source": "hf"} and m.count == 5 and len(m.dates) == 5
    assert g2.extractor_sha256 == SHA_A and g2.embedding_dim == 8
    with h5py.File(path) as f:
        assert f.attrs["fpt_kind"] == "gallery" and int(f.attrs["fpt_schema"]) == 1
        grp = f["models"][next(iter(f["models"]))]
        np.testing.assert_allclose(grp["fingerprint"][()], m.fingerprint, atol=1e-6)


def test_reenrolling_same_image_is_noop(tmp_path, rng):
    path = tmp_path / "g.h5"
    emb = _unit(rng.normal(size=(4, 8)))
    with edit_gallery(path, create=True) as g:
        _add(g, "m", emb)
    with edit_gallery(path) as g:
        r = _add(g, "m", emb)
    assert (r.added, r.duplicates, r.total) == (0, 4, 4)
    assert load_gallery(path).get("m").count == 4


def test_mixing_extractors_refused(tmp_path, rng):
    path = tmp_path / "g.h5"
    with edit_gallery(path, create=True) as g:
        _add(g, "m", _unit(rng.normal(size=(3, 8))))
    before = path.read_bytes()
    with pytest.raises(ExtractorMismatchError) as ei:
        with edit_gallery(path) as g:
            _add(g, "other", _unit(rng.normal(size=(3, 8))), sha=SHA_B)
    assert "re-enroll" in ei.value.one_line()
    assert path.read_bytes() == before


def test_non_gallery_files_give_clean_errors(tmp_path):
    h5 = tmp_path / "other.h5"
    with h5py.File(h5, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(StoreError, match="not written by fpt"):
        load_gallery(h5)
    pool = tmp_path / "pool.h5"
    with h5py.File(pool, "w") as f:
        f.attrs["fpt_kind"] = "pool"
        f.attrs["fpt_schema"] = 1
    with pytest.raises(StoreError, match="fpt pool, not an fpt gallery"):
        load_gallery(pool)
    rnd = tmp_path / "random.h5"
    rnd.write_bytes(os.urandom(4096))
    with pytest.raises(StoreError, match="not an HDF5 file"):
        load_gallery(rnd)
    with pytest.raises(StoreError, match="no such gallery"):
        load_gallery(tmp_path / "missing.h5")


def test_cli_clean_error_lines(tmp_path, capsys):
    from fpt.cli import main

    rnd = tmp_path / "random.h5"
    rnd.write_bytes(os.urandom(2048))
    assert main(["gallery", "list", "--gallery", str(rnd)]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not an HDF5 file" in err[0] and "Traceback" not in err[0]
    h5 = tmp_path / "other.h5"
    with h5py.File(h5, "w") as f:
        f["x"] = 1
    assert main(["gallery", "show", "m", "--gallery", str(h5)]) == 3


def test_interrupted_edit_leaves_gallery_intact(tmp_path, rng):
    path = tmp_path / "g.h5"
    with edit_gallery(path, create=True) as g:
        _add(g, "keep", _unit(rng.normal(size=(3, 8))))
    before = path.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with edit_gallery(path) as g:
            _add(g, "lost", _unit(rng.normal(size=(3, 8))))
            raise KeyboardInterrupt
    assert path.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_writer_killed_mid_write_leaves_previous_gallery(tmp_path, rng):
    path = tmp_path / "g.h5"
    with edit_gallery(path, create=True) as g:
        _add(g, "keep", _unit(rng.normal(size=(3, 8))))
    before = path.read_bytes()
    marker = tmp_path / "writing"
    code = textwrap.dedent(f"""
        import time, numpy as np, fpt.gallery as G
        real_write = G._write
        def slow_write(g, target):
            real_write(g, target)            # the temp file is complete ...
            with open(target, "r+b") as fh:  # ... then gets torn, as a crash mid-write would
                fh.truncate(100)
            open({str(marker)!r}, "w").close()
            time.sleep(60)
        G._write = slow_write
        with G.edit_gallery({str(path)!r}) as g:
            G.add_embeddings(g, "lost", np.ones((2, 8), np.float32), ["a", "b"], ["h1", "h2"],
                             np.zeros(2, bool), {SHA_A!r}, 8)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    try:
        for _ in range(600):
            if marker.exists():
                break
            time.sleep(0.05)
        assert marker.exists(), "writer never reached the write"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert path.read_bytes() == before
    g = load_gallery(path)
    assert g.names() == ["keep"]
    # the lock died with the writer: a new edit goes through
    with edit_gallery(path) as g:
        _add(g, "after", _unit(rng.normal(size=(2, 8))))
    assert load_gallery(path).names() == ["after", "keep"]


def test_concurrent_writers_keep_every_entry(tmp_path):
    path = tmp_path / "g.h5"
    code = textwrap.dedent("""
        import sys, numpy as np, fpt.gallery as G
        who = sys.argv[1]
        rng = np.random.default_rng(abs(hash(who)) % 1000)
        for i in range(8):
            with G.edit_gallery(sys.argv[2], create=True) as g:
                e = rng.normal(size=(2, 8)).astype(np.float32)
                G.add_embeddings(g, f"{who}-{i}", e, ["p1", "p2"], [f"{who}{i}a", f"{who}{i}b"],
                                 np.zeros(2, bool), "a" * 64, 8)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, w, str(path)], cwd=REPO) for w in ("x", "y")]
    for p in procs:
        assert p.wait(120) == 0
    g = load_gallery(path)
    assert sorted(g.names()) == sorted([f"x-{i}" for i in range(8)] + [f"y-{i}" for i in range(8)])
    assert all(m.count == 2 for m in g.models.values())


def test_rename_remove(tmp_path, rng):
    path = tmp_path / "g.h5"
    with edit_gallery(path, create=True) as g:
        _add(g, "a", _unit(rng.normal(size=(2, 8))))
        _add(g, "b", _unit(rng.normal(size=(2, 8))))
    with edit_gallery(path) as g:
        rename_model(g, "a", "c")
        with pytest.raises(InputError, match="already exists"):
            rename_model(g, "c", "b")
    with edit_gallery(path) as g:
        remove_model(g, "b")
        with pytest.raises(InputError, match="no model named"):
            remove_model(g, "zzz")
    assert load_gallery(path).names() == ["c"]


def test_csv_round_trip(tmp_path, rng):
    g = Gallery(tmp_path / "g.h5")
    _add(g, "m,1", _unit(rng.normal(size=(3, 8))), meta={"k": "v"})
    _add(g, "m2", _unit(rng.normal(size=(2, 8))))
    assert export_csv(g, tmp_path / "g.csv") == 5
    h = Gallery(tmp_path / "h.h5")
    res = import_csv(h, tmp_path / "g.csv")
    assert sorted(r.added for r in res) == [2, 3]
    for n in g.names():
        np.testing.assert_allclose(h.get(n).embeddings, g.get(n).embeddings, atol=1e-6)
        assert h.get(n).hashes == g.get(n).hashes
    assert h.get("m,1").meta == {"k": "v"} and h.extractor_sha256 == SHA_A
    assert [r.added for r in import_csv(h, tmp_path / "g.csv")] == [0, 0]  # idempotent
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="not a gallery CSV"):
        import_csv(h, tmp_path / "bad.csv")


def test_calibration_leave_one_out_known_answer():
    g = Gallery(Path("x"))
    # model a: two identical unit vectors along e0 ; model b: along e1
    g.models["a"] = ModelEntry("a", np.array([[1, 0, 0], [1, 0, 0]], np.float32))
    g.models["b"] = ModelEntry("b", np.array([[0, 1, 0], [0, 1, 0]], np.float32))
    gen, imp, ok = calibration_scores(g)
    np.testing.assert_allclose(gen, 1.0)
    np.testing.assert_allclose(imp, 0.0, atol=1e-7)
    assert ok.all()
    cal = calibrate(g, far=0.0)
    assert 0.0 < cal.threshold <= 1.0 and cal.expected_far == 0.0 and cal.expected_frr == 0.0
    assert cal.loo_accuracy == 1.0 and g.calibration is cal


def test_leave_one_out_scores_match_direct_products_for_any_block_size(rng, monkeypatch):
    import fpt.attribution as attribution
    import fpt.gallery as gallery

    g = Gallery(Path("x"))
    centres = {f"m{i}": rng.normal(size=16) for i in range(7)}
    for name, e in _clustered(rng, centres, n=5, noise=0.6).items():
        g.models[name] = ModelEntry(name, e.astype(np.float32))
    g.models["single"] = ModelEntry("single", _clustered(rng, {"s": rng.normal(size=16)}, n=1, noise=0.6)["s"])
    names, fps = g.fingerprint_matrix()
    fps64 = fps.astype(np.float64)
    seen = []
    for block in (1, 16, 10**6):  # one model per block, a few, all at once
        got = list(gallery.leave_one_out_scores(g, block_elements=block))
        assert [s.index for s in got] == [names.index(n) for n in names if n != "single"]
        for s in got:
            e = g.models[names[s.index]].embeddings.astype(np.float64)
            e /= np.linalg.norm(e, axis=1, keepdims=True)
            np.testing.assert_allclose(s.raw, e @ fps64.T, rtol=0, atol=1e-12)
            for j in range(len(e)):  # the image's own model rebuilt from its other images
                rest = np.delete(e, j, axis=0).sum(axis=0)
                assert s.own[j] == pytest.approx(e[j] @ rest / np.linalg.norm(rest), abs=1e-12)
        monkeypatch.setattr(gallery, "LOO_BLOCK_ELEMENTS", block)
        check = attribution.check_gallery(g)
        np.testing.assert_allclose(calibration_scores(g)[1], _reference_impostors(g), rtol=0, atol=1e-12)
        seen.append((check.expected_far, check.expected_frr, check.loo_accuracy,
                     [(c.model, c.other, c.share, c.accepted_share) for c in check.confusions], check.confused_pairs))
    assert seen[0] == seen[1] == seen[2]


def _reference_impostors(g: Gallery) -> np.ndarray:
    """Each image's best cosine to another model's fingerprint, one model at a time."""
    names, fps = g.fingerprint_matrix()
    out = []
    for i, n in enumerate(names):
        e = g.models[n].embeddings.astype(np.float64)
        if len(e) >= 2:
            e /= np.linalg.norm(e, axis=1, keepdims=True)
            out.append(np.delete(e @ fps.astype(np.float64).T, i, axis=1).max(axis=1))
    return np.concatenate(out)


def test_calibration_hits_requested_far(rng):
    g = Gallery(Path("x"))
    centres = {f"m{i}": rng.normal(size=16) for i in range(6)}
    for name, e in _clustered(rng, centres, n=20, noise=0.3).items():
        g.models[name] = ModelEntry(name, e.astype(np.float32))
    cal = calibrate(g, far=0.1)
    assert cal.expected_far <= 0.1
    _, imp, _ = calibration_scores(g)
    assert np.mean(imp >= cal.threshold) == cal.expected_far
    with pytest.raises(InputError):
        calibrate(Gallery(Path("y")), 0.05)


def test_default_path_and_meta(monkeypatch, tmp_path):
    monkeypatch.setenv("FPT_GALLERY", str(tmp_path / "x.h5"))
    assert default_gallery_path() == tmp_path / "x.h5"
    monkeypatch.delenv("FPT_GALLERY")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_gallery_path() == tmp_path / "data" / "fpt" / "gallery.h5"
    assert parse_meta(["a=1", "b = x=y"]) == {"a": "1", "b": "x=y"}
    with pytest.raises(InputError):
        parse_meta(["novalue"])
