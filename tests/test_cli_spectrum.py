"""End-to-end ``fpt spectrum`` / ``fpt demo upsample`` through ``fpt.cli.main``, plus report helpers."""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import shared_data
from fpt.cli import main
from fpt.report import dumps_json, print_json, print_table, progress, pyplot, save_figure, to_jsonable


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def folder(tmp_path, rng) -> Path:
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(d / f"n{i}.png")
    # A 2x nearest-upsampled image in a subfolder: same name as a top-level file on purpose.
    small = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    Image.fromarray(np.kron(small, np.ones((2, 2, 1), dtype=np.uint8))).save(d / "sub" / "n0.png")
    return d


# ------------------------------------------------------------------ fpt spectrum


def test_spectrum_folder_json(capsys, folder):
    code, out, err = _run(capsys, "spectrum", folder, "--json", "--device", "cpu")
    assert code == 0, err
    data = json.loads(out)
    assert data["summary"]["images"] == 4 and data["summary"]["failed"] == 0
    assert [g["crop"] for g in data["groups"]] == [40]  # first image's shorter side
    rows = {Path(r["path"]).relative_to(folder).as_posix(): r for r in data["images"]}
    assert set(rows) == {"n0.png", "n1.png", "n2.png", "sub/n0.png"}
    for r in rows.values():
        assert 0.0 < r["hp_ratio"] < 1.0 and r["residual_energy"] > 0 and r["ai_max"] >= r["ai_mean"]
    assert rows["n1.png"]["width"] == 48 and rows["n1.png"]["height"] == 40


def test_spectrum_single_image_table_and_out(capsys, folder, tmp_path):
    out_dir = tmp_path / "out"
    code, out, err = _run(capsys, "spectrum", folder / "n1.png", "--out", out_dir, "--grey")
    assert code == 0, err
    assert "n1.png" in out and "48x40" in out and "HP ratio" in out
    assert {p.name for p in out_dir.iterdir()} == {"n1.png", "n1.npz", "summary.json"}
    with np.load(out_dir / "n1.npz") as z:
        assert z["power"].shape == (1, 40, 48)  # --grey: one channel
        assert z["ai"].shape == (20,)
        assert z["autocorr"][z["autocorr"].shape[0] // 2, z["autocorr"].shape[1] // 2] == pytest.approx(1.0)
    assert json.loads((out_dir / "summary.json").read_text())["summary"]["grey"] is True


def test_spectrum_folder_out_has_mean_and_unique_names(capsys, tmp_path, rng):
    d = tmp_path / "two"
    for sub in ("a", "b"):
        (d / sub).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(d / sub / "x.png")
    out_dir = tmp_path / "out"
    code, out, err = _run(capsys, "spectrum", d, "--out", out_dir, "--crop", "32")
    assert code == 0, err
    names = {p.name for p in out_dir.iterdir()}
    assert names == {"mean_spectrum.png", "mean_spectrum.npz", "a__x.npz", "a__x.png", "b__x.npz", "b__x.png", "summary.json"}
    with np.load(out_dir / "mean_spectrum.npz") as z:
        assert z["power"].shape == (3, 32, 32)
    assert "Summary per input" in out and "a/x.png" in out and "b/x.png" in out


def test_spectrum_one_group_per_input(capsys, folder, tmp_path):
    code, out, err = _run(capsys, "spectrum", folder, folder / "sub", "--out", tmp_path / "o2", "--no-per-image", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert [(Path(g["input"]).name, g["images"]) for g in data["groups"]] == [("imgs", 4), ("sub", 1)]
    assert data["summary"]["images"] == 5
    assert {p.name for p in (tmp_path / "o2").iterdir()} == {
        "mean_spectrum_imgs.png", "mean_spectrum_imgs.npz", "mean_spectrum_sub.png", "mean_spectrum_sub.npz", "summary.json"
    }


def test_spectrum_detects_upsampling_grid(capsys, tmp_path, rng):
    # Nearest 2x upsampling of noise, then a random 'deconvolution' kernel: peaks at 1/2 remain.
    from fpt.spectrum.demo import circular_conv2d, upsample_kernels
    from fpt.spectrum import zero_interleave
    import torch

    x = torch.from_numpy(rng.random((3, 64, 64)))
    y = circular_conv2d(zero_interleave(x), upsample_kernels(1)["deconvolution"].double())
    y = (y - y.min()) / (y.max() - y.min())
    Image.fromarray((y[0].numpy() * 65535).astype(np.uint16)).save(tmp_path / "g.png")
    code, out, err = _run(capsys, "spectrum", tmp_path / "g.png", "--json", "--residual", "none")
    assert code == 0, err
    labels = {p["label"] for p in json.loads(out)["images"][0]["peaks"]}
    assert "(1/2, 1/2)" in labels or "(0, 1/2)" in labels


def test_spectrum_skips_bad_files_and_warns(capsys, folder):
    (folder / "broken.png").write_text("not an image")
    code, out, err = _run(capsys, "spectrum", folder, "--json")
    assert code == 0
    data = json.loads(out)
    assert data["summary"]["images"] == 4 and data["summary"]["failed"] == 1
    assert "broken.png" in data["failures"][0]["path"] and "not an image" in data["failures"][0]["reason"]
    assert "skipped" in err and "broken.png" in err


def test_spectrum_periodic_option(capsys, folder):
    code, out, err = _run(capsys, "spectrum", folder / "n1.png", "--json", "--periodic")
    assert code == 0, err
    data = json.loads(out)
    assert data["summary"]["periodic"] is True and 0 < data["images"][0]["hp_ratio"] < 1


def test_spectrum_limit_applies_per_input(capsys, folder):
    code, out, _ = _run(capsys, "spectrum", folder, folder / "sub", "--json", "--limit", "2")
    assert code == 0 and [g["images"] for g in json.loads(out)["groups"]] == [2, 1]


# ------------------------------------------------------------------ bad inputs: one line, non-zero exit


def _png16_rgb(path: Path, rng) -> Path:
    data = rng.integers(0, 65536, (16, 16, 3)).astype(">u2")
    raw = b"".join(b"\x00" + row.tobytes() for row in data)

    def chunk(tag: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload) & 0xFFFFFFFF)

    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 16, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    return path


def _bomb(path: Path) -> Path:
    def chunk(tag: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload) & 0xFFFFFFFF)

    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00\x00"))
        + chunk(b"IEND", b"")
    )
    return path


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda d, rng: d / "missing.png", "missing.png: no such file or folder"),
        (lambda d, rng: (d / "t.png").write_text("hello") and d / "t.png", "t.png: not an image"),
        (lambda d, rng: _truncated(d, rng), "trunc.png: image file is truncated"),
        (lambda d, rng: Image.new("RGB", (1, 1)).save(d / "one.png") or d / "one.png", "one.png: image is 1x1 px"),
        (lambda d, rng: _bomb(d / "bomb.png"), "bomb.png: image too large: refused by the decompression-bomb guard"),
    ],
    ids=["missing", "text-as-png", "truncated", "1x1", "bomb"],
)
def test_bad_single_inputs(capsys, tmp_path, rng, make, expected):
    code, out, err = _run(capsys, "spectrum", make(tmp_path, rng))
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("fpt: error:")]
    assert len(lines) == 1 and expected in lines[0], err
    assert err.count(expected.split(": ", 1)[1]) == 1, err  # said once: no 'skipped' warning echoing the error
    assert "Traceback" not in err and out == ""


def _truncated(d: Path, rng) -> Path:
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(d / "full.png")
    data = (d / "full.png").read_bytes()
    (d / "trunc.png").write_bytes(data[: len(data) // 2])
    (d / "full.png").unlink()
    return d / "trunc.png"


@pytest.mark.parametrize("kind", ["rgb16", "cmyk", "palette-gif", "palette-png", "rgba"])
def test_unusual_modes_are_analysed(capsys, tmp_path, rng, kind):
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    if kind == "rgb16":
        path = _png16_rgb(tmp_path / "x.png", rng)
    elif kind == "cmyk":
        path = tmp_path / "x.jpg"
        Image.fromarray(rgb).convert("CMYK").save(path)
    elif kind.startswith("palette"):
        path = tmp_path / ("x.gif" if kind == "palette-gif" else "x.png")
        Image.fromarray(rgb).convert("P").save(path)
    else:
        path = tmp_path / "x.png"
        Image.fromarray(np.dstack([rgb, rgb[..., :1]]), mode="RGBA").save(path)
    code, out, err = _run(capsys, "spectrum", path, "--json")
    assert code == 0, err
    assert json.loads(out)["images"][0]["hp_ratio"] > 0


def test_empty_folder(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    code, _, err = _run(capsys, "spectrum", tmp_path)
    assert code == 2 and "no images found" in err


def test_every_file_failed_is_an_error(capsys, tmp_path):
    for i in range(2):
        (tmp_path / f"b{i}.png").write_text("nope")
    code, out, err = _run(capsys, "spectrum", tmp_path)
    assert code == 2
    assert "none of the 2 images could be read" in err and "b0.png" in err


def test_bad_options(capsys, tmp_path, folder):
    code, _, err = _run(capsys, "spectrum", folder, "--residual", "bogus")
    assert code == 2 and "unknown residual 'bogus'" in err and "highpass" in err
    code, _, err = _run(capsys, "spectrum", folder, "--crop", "2")
    assert code == 2 and "--crop 2 is too small" in err
    code, _, err = _run(capsys, "spectrum", folder, "--device", "tpu")
    assert code == 2 and "unknown device" in err


def test_debug_shows_traceback(tmp_path):
    from fpt.errors import InputError

    with pytest.raises(InputError):
        main(["--debug", "spectrum", str(tmp_path / "missing.png")])
    main(["spectrum", "--help"])  # reset the --debug state for later tests


# ------------------------------------------------------------------ demo


def test_demo_upsample_json_and_figure(capsys, tmp_path):
    code, out, err = _run(capsys, "demo", "upsample", "--json", "--size", "32", "--out", tmp_path)
    assert code == 0, err
    data = json.loads(out)
    steps = {s["name"]: s for s in data["steps"]}
    assert data["replication_error"] < 1e-9
    assert steps["+ nearest kernel"]["hp_ratio"] < steps["zero-interleaved"]["hp_ratio"]
    assert steps["+ bilinear kernel"]["hp_ratio"] < steps["zero-interleaved"]["hp_ratio"]
    assert {"(0, 1/2)", "(1/2, 0)", "(1/2, 1/2)"} <= {p["label"] for p in steps["+ deconvolution kernel"]["peaks"]}
    assert (tmp_path / "upsample_demo.png").stat().st_size > 1000


def test_demo_upsample_on_image_table(capsys, tmp_path, rng):
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "i.png")
    code, out, err = _run(capsys, "demo", "upsample", tmp_path / "i.png", "--size", "32")
    assert code == 0, err
    assert "image, grey centre crop 32x32" in out and "+ deconvolution kernel" in out
    code, _, err = _run(capsys, "demo", "upsample", "--size", "4")
    assert code == 2 and "too small" in err


# ------------------------------------------------------------------ shared dev data


def test_spectrum_runs_clean_on_every_dev_generator_folder(capsys):
    root = shared_data("dev-generators")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    assert folders
    for d in folders:
        code, out, err = _run(capsys, "spectrum", d, "--limit", "2", "--json")
        assert code == 0, (d, err)
        data = json.loads(out)
        assert data["summary"]["images"] == 2 and data["summary"]["failed"] == 0, d
        assert all(0 < r["hp_ratio"] < 1 for r in data["images"]), d


# ------------------------------------------------------------------ report helpers


def test_report_json_and_table(capsys, tmp_path):
    @dataclass
    class R:
        x: float
        p: Path
        a: np.ndarray
        n: np.float32

    obj = R(float("nan"), tmp_path, np.arange(3), np.float32(1.5))
    assert to_jsonable(obj) == {"x": None, "p": str(tmp_path), "a": [0, 1, 2], "n": 1.5}
    print_json({"r": obj, "t": (1, 2)})
    assert json.loads(capsys.readouterr().out) == {"r": {"x": None, "p": str(tmp_path), "a": [0, 1, 2], "n": 1.5}, "t": [1, 2]}
    assert json.loads(dumps_json(float("inf"))) is None
    print_table("T", ["name", "v"], [["a", 0.123456789], ["b", None], ["c", True]])
    out = capsys.readouterr().out
    assert "0.1235" in out and "-" in out and "yes" in out
    with progress() as bar:
        task = bar.add_task("x", total=2)
        bar.advance(task, 2)
    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    p = save_figure(fig, tmp_path / "f" / "fig.png")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
