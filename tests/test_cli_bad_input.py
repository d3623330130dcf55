"""Every misuse of the INSTALLED ``fpt`` console script gets one clean line and loses nothing.

Each case runs ``fpt`` (found on PATH, as a user would) in a subprocess and checks the exit code,
exactly one line on stderr (warnings aside), no traceback anywhere, and that the files a write
command could touch (gallery, pool, checkpoints, the shipped weights) keep their exact bytes. The
cases are the hardening issue's list plus the foundation issue's bad images. Most answer before
importing torch; the few that embed images are marked slow.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_cli_spectrum import _bomb, _truncated

REPO = Path(__file__).resolve().parents[1]
FPT = shutil.which("fpt")
SHIPPED = REPO / "fpt" / "weights" / "extractor.pt"

pytestmark = pytest.mark.skipif(FPT is None, reason="the fpt console script is not on PATH (pip install -e . first)")

# Lines that are warnings, not the error: ours ("warning: ...") and Python's ("...Warning: ..."
# followed by the indented source line).
_WARNING = re.compile(r"^(warning: |\S.*Warning: |\s{2}\S)")


class _Payload:
    """A pickle that would create a file when unpickled: it must never run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def run_fpt(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([FPT, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def assert_one_line(res: subprocess.CompletedProcess, code: int, needle: str | None = None) -> str:
    """Exit ``code``, one non-warning stderr line (starting 'fpt: '), no traceback; returns the line."""
    both = res.stdout + res.stderr
    assert "Traceback" not in both, both
    lines = [ln for ln in res.stderr.splitlines() if not _WARNING.match(ln)]
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{res.stderr}"
    assert lines[0].startswith("fpt: "), lines[0]
    assert res.returncode == code, f"exit {res.returncode}, expected {code}: {lines[0]}"
    if needle:
        assert needle in lines[0], lines[0]
    return lines[0]


def digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One tiny set of inputs for every case: images, a real gallery, bad files."""
    from fpt.extractor.checkpoint import load_extractor
    from fpt.gallery import add_embeddings, edit_gallery

    d = tmp_path_factory.mktemp("bad-input")
    rng = np.random.default_rng(0)
    imgs = d / "imgs"
    imgs.mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(imgs / f"p{i}.png")
    (d / "empty").mkdir()
    # A gallery as the shipped extractor would write it (random unit embeddings: the cases here
    # fail before any score is computed).
    ex = load_extractor(None, device="cpu")
    gallery = d / "g.h5"
    with edit_gallery(gallery, create=True) as g:
        for name in ("alpha", "beta"):
            e = rng.normal(size=(3, ex.embedding_dim)).astype(np.float32)
            add_embeddings(g, name, e, [f"/x/{name}{i}.png" for i in range(3)], [f"{name}{i}" for i in range(3)],
                           np.zeros(3, bool), ex.sha256, ex.embedding_dim)
    ro = d / "readonly.h5"
    shutil.copyfile(gallery, ro)
    ro.chmod(0o444)
    (d / "not-a-gallery.h5").write_text("hello")
    (d / "exists.pt").write_bytes(b"precious")
    np.savez(d / "evil.npz", embeddings=np.array([object()], dtype=object), labels=np.array(["a"]))
    (d / "trunc.pt").write_bytes(SHIPPED.read_bytes()[:5000])
    with open(d / "pickled.pt", "wb") as fh:
        pickle.dump({"net": _Payload(d / "PWNED")}, fh)
    _truncated(d, rng)  # d/trunc.png
    _bomb(d / "bomb.png")
    Image.new("RGB", (1, 1)).save(d / "one.png")
    (d / "text.png").write_text("hello")
    env = {**os.environ, "FPT_THREADS": "1", "FPT_GALLERY": str(d / "default-gallery.h5"),
           "XDG_DATA_HOME": str(d / "xdg"), "COLUMNS": "200"}
    return {"d": d, "img": imgs / "p0.png", "imgs": imgs, "g": gallery, "ro": ro, "env": env}


# (id, argv template, exit code, text the error line must contain, files whose bytes must not change)
# Placeholders: {d} the fixture folder, {img} an image, {imgs} a folder of images, {g} a gallery,
# {ro} a read-only gallery.
CASES = [
    ("unknown-option", ["--bogus"], 2, "No such option", []),
    ("bare-dash-file", ["identify", "-dash.png"], 2, "No such option", []),
    ("threads-negative", ["--threads", "-1", "gallery", "list"], 2, "--threads", []),
    ("identify-batch-0", ["identify", "--batch-size", "0", "-g", "{g}", "{img}"], 2, "--batch-size", ["{g}"]),
    ("embed-batch-neg", ["embed", "--batch-size", "-1", "-o", "{d}/e.npz", "{img}"], 2, "--batch-size", ["{d}/e.npz"]),
    ("enroll-batch-0", ["enroll", "m", "{img}", "-g", "{g}", "--batch-size", "0"], 2, "--batch-size", ["{g}"]),
    ("identify-windows-0", ["identify", "--windows", "0", "-g", "{g}", "{img}"], 2, "--windows", ["{g}"]),
    ("enroll-windows-0", ["enroll", "m", "{img}", "-g", "{g}", "--windows", "0"], 2, "--windows", ["{g}"]),
    ("verify-far-2", ["verify", "--far", "2", "{img}", "{img}"], 2, "--far", []),
    ("identify-rank-bogus", ["identify", "--rank", "bogus", "-g", "{g}", "{img}"], 2, "ranking must be one of", ["{g}"]),
    ("eval-rank-bogus", ["eval", "{imgs}", "--rank", "bogus", "--methods", "spectrum"], 2, "ranking must be one of", []),
    ("top-k-abc", ["identify", "--top-k", "abc", "-g", "{g}", "{img}"], 2, "--top-k", []),
    ("top-k-0", ["identify", "--top-k", "0", "-g", "{g}", "{img}"], 2, "--top-k", []),
    ("top-k-neg", ["identify", "--top-k", "-1", "-g", "{g}", "{img}"], 2, "--top-k", []),
    ("synth-lr-neg", ["synth", "--images", "{imgs}", "--out", "{d}/pool.h5", "--lr", "-1"], 2, "--lr", ["{d}/pool.h5"]),
    ("synth-crops-0", ["synth", "--images", "{imgs}", "--out", "{d}/pool.h5", "--crops", "0"], 2, "--crops", ["{d}/pool.h5"]),
    ("synth-workers-0", ["synth", "--images", "{imgs}", "--out", "{d}/pool.h5", "--workers", "0"], 2, "--workers", ["{d}/pool.h5"]),
    ("synth-target-neg", ["synth", "--images", "{imgs}", "--out", "{d}/pool.h5", "--target", "-1"], 2, "--target", ["{d}/pool.h5"]),
    ("synth-seeds-0", ["synth", "--images", "{imgs}", "--out", "{d}/pool.h5", "--seeds", "0"], 2, "--seeds", ["{d}/pool.h5"]),
    ("synth-merge-no-parts", ["synth", "merge", "{d}/merged.h5"], 2, "shards", ["{d}/merged.h5"]),
    ("synth-out-under-file", ["synth", "--images", "{imgs}", "--out", "/dev/null/x.h5"], 2, "/dev/null", []),
    ("train-crop-size-0", ["train", "--crop-size", "0", "--out", "{d}/x.pt"], 2, "--crop-size", ["{d}/x.pt"]),
    ("train-width-0", ["train", "--width", "0", "--out", "{d}/x.pt"], 2, "--width", ["{d}/x.pt"]),
    ("train-jpeg-quality", ["train", "--jpeg-quality", "200-300", "--pool", "toy:4", "--images", "{imgs}",
                            "--out", "{d}/x.pt"], 2, "--jpeg-quality", ["{d}/x.pt"]),
    ("train-out-missing-dir", ["train", "--pool", "toy:4", "--images", "{imgs}", "--out", "{d}/no/such/dir/x.pt"],
     2, "folder does not exist", ["{d}/no"]),
    ("train-no-out", ["train", "--preset", "default"], 2, "--out", [str(SHIPPED)]),
    ("train-out-exists", ["train", "--pool", "toy:4", "--images", "{imgs}", "--out", "{d}/exists.pt"], 2,
     "already exists", ["{d}/exists.pt"]),
    ("denoiser-sigma", ["train-denoiser", "--images", "{imgs}", "--sigma", "1-900", "--out", "{d}/dn.pt"], 2,
     "--sigma", ["{d}/dn.pt"]),
    ("analyse-object-npz", ["analyse", "{d}/evil.npz"], 2, "pickled", []),
    ("checkpoint-truncated", ["extractor-info", "{d}/trunc.pt"], 3, "truncated", []),
    ("checkpoint-pickled", ["extractor-info", "{d}/pickled.pt"], 3, "pickled", ["{d}/PWNED"]),
    ("enroll-readonly-gallery", ["enroll", "m", "{img}", "-g", "{ro}"], 2, "read-only", ["{ro}"]),
    ("remove-readonly-gallery", ["gallery", "remove", "alpha", "-g", "{ro}"], 2, "read-only", ["{ro}"]),
    ("enroll-gallery-missing-dir", ["enroll", "m", "{img}", "-g", "{d}/nowhere/g.h5"], 2, "folder does not exist",
     ["{d}/nowhere"]),
    ("embed-out-under-file", ["embed", "-o", "/dev/null/e.npz", "{img}"], 2, "/dev/null", []),
    ("list-not-a-gallery", ["gallery", "list", "-g", "{d}/not-a-gallery.h5"], 3, "not an HDF5 file", []),
    ("show-unknown-model", ["gallery", "show", "gamma", "-g", "{g}"], 2, "no model named", []),
    ("enroll-empty-folder", ["enroll", "m", "{d}/empty", "-g", "{g}"], 2, "empty", ["{g}"]),
    ("identify-missing-file", ["identify", "-g", "{g}", "{d}/missing.png"], 2, "missing.png", ["{g}"]),
    ("spectrum-missing", ["spectrum", "{d}/missing.png"], 2, "no such file", []),
    ("spectrum-empty-folder", ["spectrum", "{d}/empty"], 2, "empty", []),
    ("spectrum-text-as-png", ["spectrum", "{d}/text.png"], 2, "not an image", []),
    ("spectrum-truncated", ["spectrum", "{d}/trunc.png"], 2, "truncated", []),
    ("spectrum-1x1", ["spectrum", "{d}/one.png"], 2, "1x1", []),
    ("spectrum-bomb", ["spectrum", "{d}/bomb.png"], 2, "decompression-bomb", []),
]


def _fill(text: str, world: dict) -> str:
    return text.format(d=world["d"], img=world["img"], imgs=world["imgs"], g=world["g"], ro=world["ro"])


# Cases whose command imports torch before it can fail (a few seconds each on a busy 2-core box).
HEAVY = {"train-jpeg-quality", "analyse-object-npz", "checkpoint-truncated", "checkpoint-pickled",
         "enroll-empty-folder", "identify-missing-file", "spectrum-missing", "spectrum-empty-folder",
         "spectrum-text-as-png", "spectrum-truncated", "spectrum-1x1", "spectrum-bomb"}


@pytest.mark.parametrize("args, code, needle, guarded",
                         [pytest.param(*c[1:], id=c[0], marks=[pytest.mark.slow] if c[0] in HEAVY else [])
                          for c in CASES])
def test_bad_input_one_line_nothing_changed(world, args, code, needle, guarded):
    guarded = [Path(_fill(p, world)) for p in guarded]
    before = {p: digest(p) if p.is_file() or not p.exists() else "dir" for p in guarded}
    res = run_fpt([_fill(a, world) for a in args], world["env"], cwd=world["d"])
    assert_one_line(res, code, needle)
    after = {p: digest(p) if p.is_file() or not p.exists() else "dir" for p in guarded}
    assert after == before, "a file changed, appeared or vanished"


@pytest.mark.slow
def test_failed_synth_leaves_no_pool(world):
    """Settings that only fail once work starts (here: no usable image) leave no pool behind."""
    out = world["d"] / "failed-pool.h5"
    res = run_fpt(["synth", "--images", str(world["d"] / "text.png"), "--out", str(out), "--arch", "none",
                   "--grid-depths", "3", "--crops", "4"], world["env"], cwd=world["d"])
    # The "decoding N crops ..." status line is not an error: set it aside like warnings.
    res.stderr = "".join(ln for ln in res.stderr.splitlines(True) if not ln.startswith("decoding "))
    assert_one_line(res, 2, "could be read")
    assert not out.exists() and not Path(str(out) + ".parts").exists()


@pytest.mark.parametrize("args", [[], ["--help"], ["gallery"]], ids=["no-args", "help", "group-no-args"])
def test_help_is_clean(world, args):
    res = run_fpt(args, world["env"], cwd=world["d"])
    assert res.returncode in (0, 2) and "Usage: fpt" in res.stdout
    assert res.stderr == "" and "Traceback" not in res.stdout


def test_version(world):
    from fpt import __version__

    res = run_fpt(["--version"], world["env"], cwd=world["d"])
    assert (res.returncode, res.stdout.strip(), res.stderr) == (0, f"fpt {__version__}", "")


def _gallery_with_names(path: Path, names: list[str], paths: list[str], sha: str, dim: int) -> None:
    from fpt.gallery import add_embeddings, edit_gallery

    rng = np.random.default_rng(1)
    with edit_gallery(path, create=True) as g:
        for name, p in zip(names, paths):
            e = rng.normal(size=(2, dim)).astype(np.float32)
            add_embeddings(g, name, e, [p, p + "2"], [name + "0", name + "1"], np.zeros(2, bool), sha, dim,
                           {"note": "[/]meta"})


HOSTILE = ["[bold red]x.png", "[/]", "evil\x1b[31mred\x1b[0m"]


@pytest.mark.parametrize("command", ["list", "show"])
def test_markup_and_control_characters_printed_literally(world, command):
    from fpt.extractor.checkpoint import load_extractor

    ex = load_extractor(None, device="cpu")
    path = world["d"] / f"hostile-{command}.h5"
    _gallery_with_names(path, HOSTILE, [f"/img/{n}" for n in HOSTILE], ex.sha256, ex.embedding_dim)
    targets = [["gallery", "list", "-g", str(path)]] if command == "list" else \
        [["gallery", "show", n, "-g", str(path)] for n in HOSTILE]
    for args in targets:
        res = run_fpt(args, world["env"], cwd=world["d"])
        assert res.returncode == 0 and res.stderr == "", res.stderr
        assert "\x1b" not in res.stdout  # the escape is shown, not sent to the terminal
        for name in ([args[2]] if command == "show" else HOSTILE):
            shown = name.replace("\x1b", "\\x1b")
            assert shown in res.stdout, (shown, res.stdout)
        if command == "show":
            assert f"/img/{args[2]}".replace("\x1b", "\\x1b") in res.stdout  # the path column too
            assert "[/]meta" in res.stdout


@pytest.mark.slow
def test_identify_shows_hostile_model_names(world):
    from fpt.extractor.checkpoint import load_extractor

    ex = load_extractor(None, device="cpu")
    path = world["d"] / "hostile-identify.h5"
    _gallery_with_names(path, HOSTILE, [f"/img/{n}" for n in HOSTILE], ex.sha256, ex.embedding_dim)
    probe = world["d"] / "[bold red]PWN.png"
    shutil.copyfile(world["img"], probe)
    res = run_fpt(["identify", "--threshold", "-1", "--top-k", "3", "-g", str(path), str(probe)],
                  world["env"], cwd=world["d"])
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr and "\x1b" not in res.stdout
    assert "[bold red]PWN.png" in res.stdout  # the file name, not markup
    for name in HOSTILE:
        assert name.replace("\x1b", "\\x1b") in res.stdout


@pytest.mark.slow
def test_enroll_through_symlink_updates_target_and_keeps_mode(world):
    real = world["d"] / "real-gallery.h5"
    shutil.copyfile(world["g"], real)
    real.chmod(0o664)
    link = world["d"] / "link-gallery.h5"
    link.symlink_to(real)
    res = run_fpt(["enroll", "gamma", str(world["imgs"]), "-g", str(link), "--json"], world["env"], cwd=world["d"])
    assert res.returncode == 0, res.stderr
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert (real.stat().st_mode & 0o777) == 0o664
    from fpt.gallery import load_gallery

    g = load_gallery(real)
    assert "gamma" in g.models
    assert all(Path(p).is_absolute() for p in g.models["gamma"].paths)  # stored resolved, not cwd-relative


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see when torch is loaded")
def test_ctrl_c_prints_interrupted_and_keeps_gallery(world):
    """SIGINT while images are embedded: 'fpt: interrupted' line, exit 130, gallery bytes unchanged."""
    many = world["d"] / "many"
    many.mkdir(exist_ok=True)
    rng = np.random.default_rng(2)
    # enough images that embedding them outlasts a busy machine's delay in spotting torch (the
    # interrupt must land mid-embedding, not as the finished command exits)
    for i in range(1000):
        Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(many / f"m{i}.png")
    gallery = world["d"] / "ctrlc.h5"
    shutil.copyfile(world["g"], gallery)
    before = digest(gallery)
    # A suite started in the background of a non-interactive shell inherits SIGINT ignored, and so
    # would fpt (Python keeps an inherited SIG_IGN): give the child the default disposition a
    # terminal user has.
    proc = subprocess.Popen([FPT, "enroll", "many", str(many), "-g", str(gallery)], env=world["env"],
                            cwd=world["d"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    # Interrupt once the command is running (torch loaded: argument parsing is over).
    while time.time() < deadline and proc.poll() is None:
        try:
            if "libtorch" in Path(f"/proc/{proc.pid}/maps").read_text():
                break
        except OSError:
            pass
        time.sleep(0.2)
    time.sleep(1.0)
    assert proc.poll() is None, "the command finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    res = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert_one_line(res, 130, "fpt: interrupted")
    assert digest(gallery) == before
