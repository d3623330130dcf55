"""Case reports (``fpt report``): HTML well-formed and self-contained, JSON twin, folder reports with
unreadable files, the optional likelihood-ratio fields, JPEG quality, model mean spectra, bad input."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_embed import FakeExtractor, real_extractor, write_model_folder

from fpt.casefile import build_case, model_mean_curve
from fpt.cli import main
from fpt.gallery import load_gallery
from fpt.images import file_facts, jpeg_quality
from fpt.report_html import case_json, render_case_html
from fpt.storage import file_sha256

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class TagChecker(HTMLParser):
    """Tag balance (every non-void element closed, in order) and every src/href/url collected."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.links: list[str] = []
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.links += [v or "" for k, v in attrs if k in ("src", "href", "action", "srcset", "poster", "data")]
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)
        self.links += [v or "" for k, v in attrs if k in ("src", "href")]

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else 'nothing'}>")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def check_html(text: str) -> TagChecker:
    p = TagChecker()
    p.feed(text)
    p.close()
    assert not p.errors, p.errors[:5]
    assert p.stack == [], f"unclosed: {p.stack}"
    assert text.lstrip().lower().startswith("<!doctype html>")
    return p


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory):
    """A tiny real checkpoint, a 3-model gallery enrolled through the CLI, a probe folder with a
    good PNG of model 0, one of a never-enrolled model, a JPEG (quality 75) and a broken file."""
    root = tmp_path_factory.mktemp("case")
    ckpt = real_extractor(root / "tiny.pt", crop_size=32)
    g = root / "gallery.h5"
    for m in range(3):
        d = write_model_folder(root / "enroll", m, 6, size=64, seed=1)
        assert main(["--threads", "1", "enroll", f"model {m} <b>", str(d), "--gallery", str(g),
                     "--extractor", str(ckpt), "--device", "cpu", "--json"]) == 0
    probes = root / "probes"
    for src, name in ((write_model_folder(root / "p", 0, 1, size=64, seed=2), "a-model0.png"),
                      (write_model_folder(root / "p", 5, 1, size=64, seed=2), "b-stranger.png")):
        shutil.copyfile(next(src.iterdir()), probes.mkdir(exist_ok=True) or probes / name)
    with Image.open(probes / "a-model0.png") as im:
        im.save(probes / "c-photo.jpg", quality=75)
    (probes / "d-broken.png").write_bytes(b"\x89PNG this is not an image")
    return root, ckpt, g, probes


def run_fpt(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The installed console script (the one beside this interpreter, i.e. the worktree's venv)."""
    exe = shutil.which("fpt", path=str(Path(sys.executable).parent)) or shutil.which("fpt")
    assert exe, "the fpt console script is not installed"
    env = {**os.environ, "FPT_THREADS": "1"}
    return subprocess.run([exe, "--threads", "1", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


def test_folder_report_through_console_script(case_dir, tmp_path):
    root, ckpt, g, probes = case_dir
    out = tmp_path / "case.html"
    proc = run_fpt("report", str(probes), "--gallery", str(g), "--extractor", str(ckpt), "--device", "cpu",
                   "--out", str(out), "--json", cwd=tmp_path)
    assert proc.returncode == 11, proc.stderr  # report written, one probe unreadable
    assert "d-broken.png" in proc.stderr
    data = json.loads(proc.stdout)
    text = out.read_text(encoding="utf-8")
    parsed = check_html(text)

    # every probe listed, in order; the unreadable one with its error, in the HTML and the JSON
    names = [p["name"] for p in data["probes"]]
    assert names == ["a-model0.png", "b-stranger.png", "c-photo.jpg", "d-broken.png"]
    broken = data["probes"][3]
    assert broken["decision"] is None and "not an image" in broken["error"]
    assert broken["sha256"] == sha(probes / "d-broken.png")
    body = "".join(parsed.text)
    assert broken["error"] in body
    for p in data["probes"]:
        assert p["sha256"] == sha(probes / p["name"]) and p["sha256"] in text
        assert p["name"] in body
    # extractor and gallery identity, the decision of every readable probe
    assert data["record"]["extractor_sha256"] == file_sha256(ckpt) and file_sha256(ckpt) in text
    assert data["record"]["gallery_sha256"] == file_sha256(g) and file_sha256(g) in text
    for p in data["probes"][:3]:
        d = p["decision"]
        assert d["model"] == d["best_model"] if d["identified"] else d["model"] == "unknown"
        verdict = f"attributed to {d['model']}" if d["identified"] else "unknown"
        assert verdict in body
        # the gallery's own LR calibration decides: attributed exactly when log10 LR >= 0
        assert isinstance(d["log10_lr"], float) and d["verbal"] in body
        assert d["identified"] == (d["log10_lr"] >= 0)
    assert "log10 LR >= 0 (likelihood ratio calibrated on the gallery" in body
    # model names are user strings: escaped, never markup
    assert "model 0 <b>" in body and "model 0 <b>" not in text and "model 0 &lt;b&gt;" in text
    # self-contained: every src/href is an embedded image or an in-page anchor; no script at all
    assert parsed.links and all(v.startswith(("data:image/png;base64,", "#")) for v in parsed.links)
    assert "http://" not in text and "https://" not in text and "script" not in parsed.tags
    assert parsed.tags.count("img") >= 4 * 3  # per readable probe: top-k, scores, spectrum, AI
    # input warnings: the JPEG's quality is read from its quantisation tables
    assert any("JPEG-compressed (quality 75)" in w for w in data["probes"][2]["warnings"])
    assert not data["probes"][0]["warnings"]
    # evidence: model means from the enrolled files (they exist here), figure-only arrays not in JSON
    ev = data["probes"][0]["evidence"]
    assert ev["model_ai"]["images"] == 6 and len(ev["model_ai"]["values"]) == len(ev["model_ai"]["freq"])
    assert ev["runner_up_ai"]["images"] == 6 and "spectrum" not in ev
    assert ev["scores"]["impostor_at_or_above"] is not None
    assert sum(data["distributions"]["genuine_hist"]) == 18 and "genuine" not in data["distributions"]
    # reproduction: the exact commands, with the same inputs
    assert any(c.startswith("fpt identify") and str(g) in c and str(ckpt) in c for c in data["reproduce"])
    assert data["record"]["command_line"][:2] == ["fpt", "--threads"]
    assert data["html"] == str(out)


def test_lr_fields_shown_when_present(case_dir):
    """(Their absence, "not available", is checked in the console-script test above.)"""
    _, ckpt, g, probes = case_dir
    from fpt.extractor.checkpoint import load_extractor

    # the decision layer's hook (fpt.calibration, wired at merge) fills the fields
    seen = []
    case = build_case([probes / "a-model0.png"], g, load_extractor(ckpt, device="cpu"), top_k=2,
                      likelihood_ratio=lambda m, s: seen.append((m, s)) or (2.25, "moderately strong support"))
    d = case.probes[0].decision
    assert seen == [(d.best_model, d.score)] and (d.log10_lr, d.verbal) == (2.25, "moderately strong support")
    html = render_case_html(case)
    check_html(html)
    assert "+2.250" in html and "moderately strong support" in html and "Likelihood ratios are only as" in html
    assert case_json(case)["probes"][0]["decision"]["log10_lr"] == 2.25


def test_jpeg_quality_known_answer(tmp_path):
    img = Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8))
    for q in (10, 50, 75, 90, 100):
        img.save(tmp_path / f"q{q}.jpg", quality=q)
        with Image.open(tmp_path / f"q{q}.jpg") as im:
            assert jpeg_quality(im.quantization) == (q, True)
        facts = file_facts(tmp_path / f"q{q}.jpg")
        assert facts.format == "JPEG" and facts.jpeg_quality == (q, True) and (facts.width, facts.height) == (32, 32)
    img.save(tmp_path / "x.png")
    assert file_facts(tmp_path / "x.png").jpeg_quality is None
    # a non-IJG table gets the nearest quality, flagged as inexact
    tables = {0: [q + 1 for q in Image.open(tmp_path / "q75.jpg").quantization[0]]}
    q, exact = jpeg_quality(tables)
    assert not exact and 70 <= q <= 75


def test_model_mean_curve_uses_only_unchanged_enrolled_files(case_dir, tmp_path):
    root, _, g, _ = case_dir
    gal = load_gallery(g)
    c = model_mean_curve(gal, "model 1 <b>", "x")
    assert c.available and c.images == 6 and c.freq.shape == c.values.shape
    # copy the gallery elsewhere and change / remove enrolled files: they are left out
    m = gal.get("model 1 <b>")
    moved = tmp_path / "enroll"
    shutil.copytree(Path(m.paths[0]).parent, moved / "model1")
    m.paths = [str(moved / "model1" / Path(p).name) for p in m.paths]
    (moved / "model1" / Path(m.paths[0]).name).write_bytes((root / "probes" / "a-model0.png").read_bytes())
    Path(m.paths[1]).unlink()
    c = model_mean_curve(gal, "model 1 <b>", "x")
    assert c.images == 4 and "1 missing and 1 changed" in c.note
    m.paths = ["(made elsewhere) " + Path(p).name for p in m.paths]
    c = model_mean_curve(gal, "model 1 <b>", "x")
    assert not c.available and c.note.startswith("not available") and "6 not on this machine" in c.note


def test_bad_input(case_dir, tmp_path, capsys):
    _, ckpt, g, probes = case_dir
    base = ["--threads", "1", "report", "--gallery", str(g), "--extractor", str(ckpt), "--device", "cpu"]
    probe = tmp_path / "p.png"
    shutil.copyfile(probes / "a-model0.png", probe)
    before = probe.read_bytes()
    # --out naming one of the inputs is refused before anything is written
    assert main(base + [str(probe), "--out", str(probe)]) == 2
    assert "--out is one of the input files" in capsys.readouterr().err and probe.read_bytes() == before
    assert main(base + [str(tmp_path), "--out", str(probe)]) == 2  # also inside a folder given as input
    assert probe.read_bytes() == before
    # nothing readable: an error, no report
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_text("nope")
    out = tmp_path / "case.html"
    assert main(base + [str(bad), "--out", str(out)]) == 2 and not out.exists()
    assert "none of the 1 probe image(s) could be read" in capsys.readouterr().err
    # missing gallery, missing probe, bad --top-k
    assert main(["report", str(probe), "--gallery", str(tmp_path / "nope.h5"), "--out", str(out)]) == 3
    assert main(base + [str(tmp_path / "missing.png"), "--out", str(out)]) == 2
    assert main(base + [str(probe), "--out", str(out), "--top-k", "0"]) == 2
    assert main(base + [str(probe), "--out", str(out), "--max-reference", "0"]) == 2
    assert "--max-reference must be at least 1" in capsys.readouterr().err
    assert not out.exists()
    # a gallery made by another extractor
    other = FakeExtractor(crop_size=32, dim=16)
    with pytest.raises(Exception) as exc:
        build_case([probe], g, other)
    assert type(exc.value).__name__ == "ExtractorMismatchError"


def test_overwrite_keeps_mode_and_symlink(case_dir, tmp_path):
    _, ckpt, g, probes = case_dir
    real = tmp_path / "real.html"
    real.write_text("old")
    os.chmod(real, 0o640)
    link = tmp_path / "link.html"
    link.symlink_to(real)
    code = main(["--threads", "1", "report", str(probes / "a-model0.png"), "--gallery", str(g), "--extractor",
                 str(ckpt), "--device", "cpu", "--out", str(link)])
    assert code == 0
    assert link.is_symlink() and (real.stat().st_mode & 0o777) == 0o640
    check_html(real.read_text(encoding="utf-8"))
