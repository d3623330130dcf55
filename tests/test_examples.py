"""The bundled demo (README's first command) works with the shipped extractor."""

from __future__ import annotations

import json
from pathlib import Path

from fpt.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_bundled_gallery_attributes_its_probes_with_the_shipped_extractor(capsys):
    # A retrained default extractor must come with a rebuilt demo (python examples/make_demo.py):
    # the gallery refuses embeddings of another extractor.
    code = main(["identify", str(EXAMPLES / "probes"), "--gallery", str(EXAMPLES / "gallery.h5"), "--json"])
    res = json.loads(capsys.readouterr().out)
    got = {Path(r["path"]).stem: r["model"] for r in res["results"]}
    assert got == {"demo-deconv": "demo-deconv", "demo-nearest": "demo-nearest",
                   "demo-bilinear": "demo-bilinear", "not-enrolled": "unknown"}
    assert code == 10  # some probe unknown
