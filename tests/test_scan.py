"""Streaming scans (fpt identify / fpt embed with --jsonl / --csv-file): records, resume, sharding."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_embed import real_extractor, write_model_folder

from fpt.cli import main
from fpt.scan import merge_parts, part_path, shard_bounds, shard_spec, summarise_file
from fpt.storage import file_sha256

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    """Three toy models' probes plus one file that is not an image."""
    root = tmp_path_factory.mktemp("probes")
    for m in range(3):
        write_model_folder(root, m, 4, size=48, seed=2)
    (root / "broken.png").write_bytes(b"this is not a png")
    return root


def _enroll(gallery: Path, root: Path, extra: list[str]) -> None:
    for m in range(3):
        d = write_model_folder(root, m, 4, size=48, seed=1)
        assert main(["enroll", f"m{m}", str(d), "--gallery", str(gallery), *extra, "--json"]) == 0


@pytest.fixture
def gallery(tmp_path, fake, capsys):
    g = tmp_path / "g.h5"
    _enroll(g, tmp_path / "enroll", [])
    capsys.readouterr()
    return g


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_and_csv_records_equal_json_records(gallery, probes, tmp_path, capsys):
    code = main(["identify", str(probes), "--gallery", str(gallery), "--json"])
    ref = json.loads(capsys.readouterr().out)
    assert code in (0, 10, 11) and ref["failed"] and len(ref["results"]) == 12
    out = tmp_path / "scan.jsonl"
    code2 = main(["identify", str(probes), "--gallery", str(gallery), "--jsonl", str(out), "--flush-every", "5",
                  "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code2 == code
    recs = _jsonl(out)
    assert len(recs) == 13  # one per input file, in input (sorted) order
    assert [r["path"] for r in recs] == sorted(r["path"] for r in recs)
    for r in recs:
        assert r.pop("sha256") == file_sha256(r["path"])
    assert [r for r in recs if "error" not in r] == ref["results"]
    assert [r for r in recs if "error" in r] == ref["failed"]
    assert summary["records"] == 13 and summary["failed"] == 1 and summary["images"] == 12
    assert summary["unknown"] == ref["summary"]["unknown"]
    assert sum(summary["models"].values()) == 12

    # CSV: the same records, flattened, with decoding workers
    out_csv = tmp_path / "scan.csv"
    assert main(["identify", str(probes), "--gallery", str(gallery), "--csv-file", str(out_csv),
                 "--workers", "2", "--json"]) == code
    capsys.readouterr()
    rows = list(csv.DictReader(out_csv.open(newline="")))
    assert [r["path"] for r in rows] == [r["path"] for r in recs]
    by_path = {r["path"]: r for r in ref["results"]}
    for row in rows:
        if row["error"]:
            assert row["path"] == ref["failed"][0]["path"] and row["model"] == ""
            continue
        want = by_path[row["path"]]
        assert row["model"] == want["model"] and float(row["score"]) == want["score"]
        assert row["top2_model"] == want["top"][1]["model"] and float(row["top2_score"]) == want["top"][1]["score"]
        assert row["low_confidence"] == str(int(want["low_confidence"]))


def test_embed_jsonl_matches_npz(probes, fake, tmp_path, capsys):
    npz, jl = tmp_path / "e.npz", tmp_path / "e.jsonl"
    assert main(["embed", str(probes), "--out", str(npz), "--json"]) == 0
    assert main(["embed", str(probes), "--jsonl", str(jl), "--workers", "1", "--json"]) == 0
    capsys.readouterr()
    z = np.load(npz, allow_pickle=False)
    recs = [r for r in _jsonl(jl) if "error" not in r]
    assert [r["path"] for r in recs] == list(z["paths"])
    np.testing.assert_array_equal(np.array([r["embedding"] for r in recs], np.float32), z["embeddings"])
    assert main(["embed", str(probes), "--out", str(npz), "--jsonl", str(jl)]) == 2  # exclusive


def test_unreadable_file_recorded_once_and_changed_file_rescanned(gallery, probes, tmp_path, capsys):
    work = tmp_path / "probes"
    work.mkdir()
    for p in sorted(probes.rglob("*.png"))[:5]:
        (work / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "s.jsonl"
    args = ["identify", str(work), "--gallery", str(gallery), "--jsonl", str(out), "--json"]
    main(args)
    capsys.readouterr()
    assert main(args + ["--resume"]) in (10, 11, 0)
    s = json.loads(capsys.readouterr().out)
    assert s["skipped"] == 5 and s["new"] == 0 and s["failed"] == 1 and s["records"] == 5
    assert sum(r["path"].endswith("broken.png") for r in _jsonl(out)) == 1
    # the broken file is repaired: its content changed, so it is scanned again and replaces its record
    fixed = sorted(p for p in work.iterdir() if p.name != "broken.png")[0]
    (work / "broken.png").write_bytes(fixed.read_bytes())
    main(args + ["--resume"])
    s = json.loads(capsys.readouterr().out)
    assert s["rescanned"] == 1 and s["new"] == 1 and s["failed"] == 0 and s["records"] == 5
    recs = _jsonl(out)
    assert sorted(r["path"] for r in recs) == sorted(str(p) for p in work.iterdir())
    assert "error" not in next(r for r in recs if r["path"].endswith("broken.png"))


def test_torn_last_line_dropped_and_damage_elsewhere_refused(gallery, probes, tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    args = ["identify", str(probes), "--gallery", str(gallery), "--jsonl", str(out), "--json"]
    main(args)
    capsys.readouterr()
    full = out.read_bytes()
    lines = full.splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:6]) + lines[6][: len(lines[6]) // 2])  # as a SIGKILL mid-write leaves it
    assert summarise_file(out).records == 6  # the torn line is not counted
    main(args + ["--resume"])
    s = json.loads(capsys.readouterr().out)
    assert s["dropped_torn"] and s["skipped"] == 6 and s["new"] == 7
    assert out.read_bytes() == full
    damaged = b"".join(lines[:3]) + b"{garbage\n" + b"".join(lines[4:])
    out.write_bytes(damaged)
    assert main(args + ["--resume"]) == 3
    assert "damaged" in capsys.readouterr().err and out.read_bytes() == damaged  # nothing touched


def test_bad_scan_options(gallery, probes, tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    base = ["identify", str(probes), "--gallery", str(gallery)]
    assert main(base + ["--resume"]) == 2
    assert main(base + ["--jsonl", str(out), "--csv-file", str(tmp_path / "x.csv")]) == 2
    assert main(base + ["--jsonl", str(out), "--csv"]) == 2
    assert main(base + ["--jsonl", str(out), "--shard", "2/2"]) == 2
    out.write_text("precious\n")
    assert main(base + ["--jsonl", str(out)]) == 2  # exists, no --resume: refused, untouched
    assert out.read_text() == "precious\n"
    assert main(base + ["--csv-file", str(out), "--resume"]) == 2  # not a CSV scan
    assert out.read_text() == "precious\n"
    err = capsys.readouterr().err
    assert "--resume" in err and "exclusive" in err


def test_shards_merge_to_the_single_process_csv(gallery, probes, tmp_path, capsys):
    single, sharded = tmp_path / "one.csv", tmp_path / "many.csv"
    base = ["identify", str(probes), "--gallery", str(gallery), "--json"]
    main(base + ["--csv-file", str(single)])
    for i in range(3):
        assert main(base + ["--csv-file", str(sharded), "--shard", f"{i}/3"]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in tmp_path.glob("many.csv.rank*")) == [f"many.csv.rank{i}-of-3" for i in range(3)]
    assert main(["scan", "merge", str(sharded), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == 13
    assert sharded.read_bytes() == single.read_bytes()
    assert not list(tmp_path.glob("many.csv.rank*"))


def test_shard_spec_and_bounds():
    assert shard_spec(None, {}) .count == 1
    s = shard_spec("1/3", {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert (s.index, s.count, s.rank, s.world, s.auto_merge) == (3, 6, 1, 2, False)
    assert shard_spec(None, {"RANK": "1", "WORLD_SIZE": "2"}).auto_merge
    blocks = [shard_bounds(10, i, 4) for i in range(4)]
    assert blocks == [(0, 2), (2, 5), (5, 7), (7, 10)]
    assert part_path("a/b.jsonl", 3, 6).name == "b.jsonl.rank3-of-6"


def test_merge_refuses_missing_part(tmp_path):
    out = tmp_path / "s.jsonl"
    part_path(out, 0, 2).write_text('{"path": "a", "sha256": null, "error": "x"}\n')
    from fpt.errors import ConfigError

    with pytest.raises(ConfigError, match="missing"):
        merge_parts(out)
    assert not out.exists()


# ------------------------------------------------------------------ subprocess: the installed `fpt`


@pytest.fixture(scope="module")
def real_setup(tmp_path_factory):
    """A tiny real extractor checkpoint and a gallery enrolled with it (for subprocess runs)."""
    root = tmp_path_factory.mktemp("real")
    ck = real_extractor(root / "tiny.pt")
    g = root / "g.h5"
    _enroll(g, root / "enroll", ["--extractor", str(ck)])
    return ck, g


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", FPT_THREADS="1",
                PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def test_resume_after_sigkill_gives_one_record_per_image(real_setup, tmp_path, capsys):
    ck, g = real_setup
    folder = tmp_path / "many"
    for m in range(3):
        write_model_folder(folder, m, 10, size=48, seed=3)
    n = 30
    out = tmp_path / "s.jsonl"
    # --batch-size 9 = one image's 3x3 windows per forward pass: results cannot depend on which
    # images share a batch, so the resumed file must equal an uninterrupted run exactly
    base = ["fpt", "identify", str(folder), "--gallery", str(g), "--extractor", str(ck), "--batch-size", "9"]
    cmd = base + ["--jsonl", str(out), "--flush-every", "1"]
    proc = subprocess.Popen(cmd, env=_env(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the scan finished before it could be killed: " + proc.stderr.read().decode()[-500:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = out.read_bytes().count(b"\n")
    assert 3 <= done < n
    res = subprocess.run(cmd + ["--resume", "--json"], env=_env(), cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode in (0, 10), res.stderr[-2000:]
    s = json.loads(res.stdout)
    assert s["skipped"] >= done and s["skipped"] + s["new"] == n
    recs = _jsonl(out)
    assert len(recs) == n and len({r["path"] for r in recs}) == n
    ref = tmp_path / "ref.jsonl"  # an uninterrupted run (in this process: same code, no start-up cost)
    assert main(base[1:] + ["--jsonl", str(ref)]) in (0, 10)
    key = lambda r: r["path"]  # noqa: E731
    assert sorted(recs, key=key) == sorted(_jsonl(ref), key=key)


def test_torchrun_two_processes_equal_one_process(real_setup, probes, tmp_path, capsys):
    ck, g = real_setup
    # one image per forward pass (see the SIGKILL test): the merged file must be byte-identical
    args = ["identify", str(probes), "--gallery", str(g), "--extractor", str(ck), "--device", "cpu",
            "--batch-size", "9"]
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    assert main([*args, "--jsonl", str(one)]) in (0, 10, 11)  # 1 process (in this one: no start-up cost)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "fpt",
           *args, "--jsonl", str(two), "--workers", "1", "--json"]
    r2 = subprocess.run(cmd, env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert two.read_bytes() == one.read_bytes()
    assert not list(tmp_path.glob("two.jsonl.rank*"))
    assert json.loads(r2.stdout)["records"] == 13


def test_synth_under_torchrun_splits_jobs_into_one_pool(tmp_path):
    """`torchrun -m fpt synth`: the ranks share the job list and write one pool (same models as 1 process)."""
    from PIL import Image

    from fpt.synth.pool import Pool

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (36, 44, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    common = ["synth", "--images", str(photos), "--arch", "K1-L1-post-nearest-*-none", "--grid-depths", "3",
              "--size", "16", "--width", "4", "--batch", "4", "--max-steps", "3", "--crops", "16", "--device", "cpu",
              "--json"]
    pool = tmp_path / "pool.h5"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "fpt",
           *common, "--out", str(pool)]
    r = subprocess.run(cmd, env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    trained = [json.loads(part)["trained"] for part in r.stdout.replace("}\n{", "}\x00{").split("\x00")]
    assert sorted(trained) == [2, 3]  # 5 jobs, round-robin over 2 ranks
    with Pool.open(pool) as p:
        ids = list(p.model_ids)
    assert len(ids) == 5 and not (tmp_path / "pool.h5.parts").exists()
    one = tmp_path / "one.h5"
    assert main(["--threads", "1", *common, "--out", str(one)]) == 0
    with Pool.open(one) as p:
        assert list(p.model_ids) == ids


def test_top_k_indices_equals_a_full_sort():
    from fpt.attribution import top_k_indices

    s = np.array([[0.1, 0.9, 0.5, 0.9, 0.2], [0.3, 0.3, 0.3, 0.1, 0.0]], np.float32)
    np.testing.assert_array_equal(top_k_indices(s, 3), [[1, 3, 2], [0, 1, 2]])  # ties: lower column first
    rng = np.random.default_rng(0)
    big = rng.random((20, 5000)).astype(np.float32)
    np.testing.assert_array_equal(top_k_indices(big, 5), np.argsort(-big, axis=1, kind="stable")[:, :5])
    # shares of a model's images (the gallery check's confusions) tie often, also at the k-th place
    shares = (rng.integers(0, 10, size=(50, 300)) / 10).astype(np.float32)
    for k in (1, 3, 7):
        np.testing.assert_array_equal(top_k_indices(shares, k), np.argsort(-shares, axis=1, kind="stable")[:, :k])
