"""Benchmark: streaming `fpt identify --jsonl` scans — 1 process vs decoding workers vs torchrun,
peak RSS against the number of files, and identification cost against the gallery size.

    python benchmarks/bench_scan.py [--images 2000] [--rss-images 2000,20000] [--models 100]
                                    [--gallery-sizes 10,1000,100000] [--skip-rss] [--skip-gallery]

1. Throughput: ``--images`` files of 512 x 512 (half PNG, half JPEG quality 95: 40 distinct
   images generated once, then copied, so every file is a real file that is read, hashed,
   decoded, windowed 3 x 3 and embedded) identified against a ``--models`` gallery (random
   fingerprints under the shipped extractor's hash; cost does not depend on their values), with
   the shipped extractor, each run a fresh child process (start-up and model load included):
   - 1 process, torch on every core (the default);
   - 1 process with ``--workers 2`` decoding processes;
   - ``torchrun --standalone --nproc_per_node=2`` (each rank one core, decoding in-process).
   Every run writes JSONL; the outputs are compared byte for byte with the first run's.
2. Peak RSS against the number of files: the same command over each ``--rss-images`` count,
   with SMALLER files (64 x 64 PNG) and ``--windows 1`` so that 20 000 files fit the time
   budget of a shared 2-core machine; only the number of files changes between the runs.
3. Gallery scale: ``fpt.attribution.identify_embeddings`` (what the scan calls per chunk) on
   chunks of 256 probes against galleries of ``--gallery-sizes`` models of ``--per-model``
   random embeddings each, per probe, ranked by raw cosine and by the gallery's whitened score
   (its fit, ``gallery_ranking``, timed on its own: a scan fits it once); brute-force matrix
   product + partial sort. Also the gallery check that ``fpt enroll`` runs after every enrolment
   (``check_gallery``: leave-one-out rates, cross-fitted whitened top-1, confusions).

Peak RSS is the maximum resident set size (``ru_maxrss``) of the main process of each run (of
each rank under torchrun). Decoding workers are forks of it and share its pages; they are not
listed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

#: runs the fpt CLI and reports its own and its largest child's peak RSS (kB) as the last stderr line
_LAUNCH = ("import resource, sys\n"
           "from fpt.cli import main\n"
           "rc = main(sys.argv[1:])\n"
           "r = resource.getrusage\n"
           "print('RSS', r(resource.RUSAGE_SELF).ru_maxrss, r(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
           "sys.exit(rc)\n")


def _make_images(folder: Path, n: int, size: int, jpeg_share: float = 0.5) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    src = folder.parent / f"src-{size}"
    src.mkdir(exist_ok=True)
    sources = []
    for i in range(40):
        base = rng.random((max(1, size // 8), max(1, size // 8), 3))
        img = np.kron(base, np.ones((8, 8, 1)))[:size, :size]
        img = np.clip(img + 0.02 * np.sin(np.arange(size) * np.pi / 2)[None, :, None]
                      + rng.normal(0, 0.01, img.shape), 0, 1)
        arr = (img * 255).astype(np.uint8)
        jpeg = i % 2 == 1 and jpeg_share > 0
        p = src / f"s{i:02d}.{'jpg' if jpeg else 'png'}"
        Image.fromarray(arr).save(p, **({"quality": 95} if jpeg else {}))
        sources.append(p)
    folder.mkdir(parents=True)
    for i in range(n):
        s = sources[i % len(sources)]
        shutil.copyfile(s, folder / f"p{i:05d}{s.suffix}")


def _child(cmd: list[str], env: dict) -> tuple[float, list[tuple[int, int]], str]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode not in (0, 10):
        sys.exit(f"child failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
    rss = [(int(a), int(b)) for line in p.stderr.splitlines() if line.startswith("RSS ")
           for a, b in [line.split()[1:3]]]
    return wall, rss, p.stdout


def _fmt_rss(rss: list[tuple[int, int]]) -> str:
    # the main process of each run (each rank under torchrun); decoding workers are forks that
    # share its pages, and RUSAGE_CHILDREN is useless here (importing torch forks a helper)
    return ", ".join(f"{a / 1024:.0f} MB" for a, _b in rss)


def throughput(work: Path, n: int, gallery: Path, env: dict) -> None:
    probes = work / "probes512"
    print(f"generating {n} files of 512 x 512 (PNG / JPEG) ...", flush=True)
    _make_images(probes, n, 512)
    launcher = work / "launch.py"
    launcher.write_text(_LAUNCH)
    common = ["identify", str(probes), "--gallery", str(gallery), "--device", "cpu", "--json"]
    runs = [
        ("1 process (torch threads = cores)", [sys.executable, str(launcher), *common], "one.jsonl", []),
        ("1 process, --workers 2", [sys.executable, str(launcher), *common], "workers.jsonl", ["--workers", "2"]),
        ("torchrun --nproc_per_node=2", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                         "--nproc_per_node=2", str(launcher), *common], "torchrun.jsonl", []),
    ]
    first = None
    base_rate = None
    print(f"{'run':<36} {'wall s':>8} {'images/s':>9} {'vs 1 proc':>9}  identical  peak RSS")
    for name, cmd, out, extra in runs:
        wall, rss, _ = _child(cmd + ["--jsonl", str(work / out), *extra], env)
        rate = n / wall
        base_rate = base_rate or rate
        same = "-" if first is None else ("yes" if (work / out).read_bytes() == first else "NO")
        first = first if first is not None else (work / out).read_bytes()
        print(f"{name:<36} {wall:8.1f} {rate:9.2f} {rate / base_rate:8.2f}x  {same:>9}  {_fmt_rss(rss)}", flush=True)
    shutil.rmtree(probes)


def rss_flatness(work: Path, counts: list[int], gallery: Path, env: dict) -> None:
    launcher = work / "launch.py"
    launcher.write_text(_LAUNCH)
    print(f"{'files (64 x 64 PNG, --windows 1)':<36} {'wall s':>8} {'images/s':>9}  peak RSS")
    for n in counts:
        folder = work / f"small{n}"
        _make_images(folder, n, 64, jpeg_share=0)
        out = work / f"small{n}.jsonl"
        wall, rss, stdout = _child([sys.executable, str(launcher), "identify", str(folder), "--gallery", str(gallery),
                                    "--device", "cpu", "--windows", "1", "--json", "--jsonl", str(out)], env)
        assert json.loads(stdout)["records"] == n
        print(f"{n:<36} {wall:8.1f} {n / wall:9.1f}  {_fmt_rss(rss)}", flush=True)
        shutil.rmtree(folder)
        out.unlink()


def gallery_scale(sizes: list[int], dim: int, per_model: int = 10, chunk: int = 256, repeats: int = 3) -> None:
    from fpt.attribution import check_gallery, gallery_lr_calibration, gallery_ranking, identify_embeddings
    from fpt.gallery import Gallery, ModelEntry

    rng = np.random.default_rng(0)
    probes = rng.normal(size=(chunk, dim)).astype(np.float32)
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    print(f"{per_model} images per model; LR fit = gallery_lr_calibration(), ranking fit = gallery_ranking(): "
          "once per gallery, as a scan does; check = check_gallery(), after every enroll")
    print(f"{'models':>8} {'fingerprints MB':>15} {'fingerprint_matrix() s':>22} {'LR fit s':>8} {'ranking fit s':>13} "
          f"{'check s':>8} {'identify ms/probe cosine':>24} {'whitened':>9} {'ratio':>6} {'of which matmul':>16}")
    for m in sizes:
        emb = rng.normal(size=(m * per_model, dim)).astype(np.float32)
        g = Gallery(path=Path("bench.h5"), embedding_dim=dim,
                    models={f"model{i:06d}": ModelEntry(f"model{i:06d}", emb[i * per_model:(i + 1) * per_model])
                            for i in range(m)})
        t0 = time.perf_counter()
        fps = g.fingerprint_matrix()
        t_fp = time.perf_counter() - t0
        t0 = time.perf_counter()
        cal = gallery_lr_calibration(g)
        t_cal = time.perf_counter() - t0
        t0 = time.perf_counter()
        ranking = gallery_ranking(g)
        t_rank = time.perf_counter() - t0
        t0 = time.perf_counter()
        check_gallery(g)
        t_check = time.perf_counter() - t0
        cost = {}
        for rank in ("cosine", "whitened"):
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                identify_embeddings(g, probes, top_k=3, threshold=0.5, fingerprints=fps, rank=rank, ranking=ranking,
                                    lr_calibration=cal)
                best = min(best, time.perf_counter() - t0)
            cost[rank] = best
        f64 = fps[1].astype(np.float64)
        p64 = probes.astype(np.float64)
        mm = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            p64 @ f64.T
            mm = min(mm, time.perf_counter() - t0)
        print(f"{m:>8} {fps[1].nbytes / 2**20:15.1f} {t_fp:22.2f} {t_cal:8.2f} {t_rank:13.2f} {t_check:8.2f} {1000 * cost['cosine'] / chunk:24.3f} "
              f"{1000 * cost['whitened'] / chunk:9.3f} {cost['whitened'] / cost['cosine']:6.2f} "
              f"{1000 * mm / chunk:16.3f}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--rss-images", default="2000,20000")
    ap.add_argument("--models", type=int, default=100)
    ap.add_argument("--gallery-sizes", default="10,1000,100000")
    ap.add_argument("--per-model", type=int, default=10, help="embeddings per model in the gallery-scale part")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--skip-gallery", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_identify import _make_inputs  # the gallery of random fingerprints

    env = dict(os.environ)
    env.pop("FPT_THREADS", None)  # default threads: one per core, shared among torchrun ranks
    print(f"machine: {os.cpu_count()} CPU(s); load average before: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        (work / "g").mkdir()
        _, gallery = _make_inputs(work / "g", 0, args.models)
        if not args.skip_throughput:
            throughput(work, args.images, gallery, env)
        if not args.skip_rss:
            rss_flatness(work, [int(x) for x in args.rss_images.split(",")], gallery, env)
    if not args.skip_gallery:
        from fpt.extractor.checkpoint import load_extractor

        gallery_scale([int(x) for x in args.gallery_sizes.split(",")], int(load_extractor(None, "cpu").embedding_dim),
                      per_model=args.per_model)
    print(f"load average after: {os.getloadavg()}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
