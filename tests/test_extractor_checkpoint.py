"""Extractor checkpoints: round trip, integrity, refusal of tampered and pickled-code files."""

from __future__ import annotations

import pickle
import zipfile

import pytest
import torch

from fpt.errors import CheckpointError, ConfigError
from fpt.extractor.checkpoint import (Preprocessing, load_extractor, preprocessing_for,
                                      read_checkpoint, save_extractor)
from fpt.extractor.net import build_net
from fpt.storage import file_sha256


def _tiny(num_classes: int = 0, **kw):
    torch.manual_seed(0)
    net = build_net(backbone="resnet10", width=0.125, embedding_dim=16, num_classes=num_classes, crop_size=32, **kw)
    net.set_normalisation(-3.0, 1.5)
    return net.eval()


def test_round_trip_same_embeddings_and_config(tmp_path):
    net = _tiny()
    pre = preprocessing_for(net, windows=3)
    path = tmp_path / "ex.pt"
    sha = save_extractor(path, net, pre, {"seed": 7, "data": "toy"})
    assert sha == file_sha256(path) and len(sha) == 64
    ex = load_extractor(path, device="cpu")
    assert ex.sha256 == sha
    assert ex.preprocessing == pre and ex.preprocessing.crop_size == 32
    assert ex.preprocessing.spec_mean == -3.0 and ex.preprocessing.spec_std == 1.5
    assert ex.config == {"seed": 7, "data": "toy"}
    assert ex.embedding_dim == 16
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = net(x).embedding
    got = ex.embed_crops(x)
    assert got.shape == (4, 16)
    torch.testing.assert_close(got.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_half_precision_file_is_smaller_and_close(tmp_path):
    net = _tiny()
    save_extractor(tmp_path / "f32.pt", net)
    save_extractor(tmp_path / "f16.pt", net, half=True)
    assert (tmp_path / "f16.pt").stat().st_size < 0.7 * (tmp_path / "f32.pt").stat().st_size
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    a = load_extractor(tmp_path / "f32.pt", "cpu").embed_crops(x)
    b = load_extractor(tmp_path / "f16.pt", "cpu").embed_crops(x)
    assert float((a * b).sum(1).min()) > 0.999


def test_denoiser_weights_travel_inside_checkpoint(tmp_path):
    net = _tiny(residual="denoiser", denoiser={"depth": 3, "channels": 8})
    with torch.no_grad():
        for p in net.transform.residual.parameters():
            p.normal_(0, 0.1)
    save_extractor(tmp_path / "d.pt", net)
    ex = load_extractor(tmp_path / "d.pt", "cpu")
    assert ex.preprocessing.residual == "denoiser"
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ex.net.transform.residual(x), net.transform.residual(x))


def test_wrong_crop_size_is_a_clear_error(tmp_path):
    save_extractor(tmp_path / "ex.pt", _tiny())
    ex = load_extractor(tmp_path / "ex.pt", "cpu")
    with pytest.raises(ConfigError, match="expects"):
        ex.embed_crops(torch.rand(2, 3, 64, 64))


def test_tampered_weights_refused(tmp_path):
    path = tmp_path / "ex.pt"
    save_extractor(path, _tiny())
    blob = torch.load(path, weights_only=True)
    key = next(k for k, v in blob["state_dict"].items() if v.is_floating_point())
    blob["state_dict"][key] = blob["state_dict"][key] + 0.01
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match="integrity"):
        load_extractor(path, "cpu")


def test_tampered_config_refused(tmp_path):
    path = tmp_path / "ex.pt"
    save_extractor(path, _tiny())
    blob = torch.load(path, weights_only=True)
    blob["preprocessing"]["windows"] = 5
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match="integrity"):
        read_checkpoint(path)


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED_MARKER",))


# torch warns about the raw pickle's protocol before refusing it; the refusal is what is tested.
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_code_refused_without_executing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"format": "fpt-extractor", "payload": _Payload()}, path)
    with pytest.raises(CheckpointError, match="refusing"):
        load_extractor(path, "cpu")
    assert not (tmp_path / "PWNED_MARKER").exists()
    # A raw pickle (not torch's zip format) is refused as well.
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(CheckpointError):
        load_extractor(raw, "cpu")
    assert not (tmp_path / "PWNED_MARKER").exists()


def test_garbage_and_missing_and_foreign(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        load_extractor(tmp_path / "junk.pt", "cpu")
    with pytest.raises(CheckpointError, match="not found"):
        load_extractor(tmp_path / "missing.pt", "cpu")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an fpt-extractor"):
        load_extractor(tmp_path / "foreign.pt", "cpu")
    # A truncated file (e.g. an interrupted copy) is refused, not half-loaded.
    save_extractor(tmp_path / "ok.pt", _tiny())
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_extractor(tmp_path / "trunc.pt", "cpu")
    assert zipfile.is_zipfile(tmp_path / "ok.pt")


def test_non_json_config_rejected(tmp_path):
    with pytest.raises(ConfigError):
        save_extractor(tmp_path / "x.pt", _tiny(), config={"bad": object()})
    assert not (tmp_path / "x.pt").exists()


def test_preprocessing_from_dict_ignores_unknown():
    p = Preprocessing.from_dict({"residual": "highpass", "crop_size": 48, "future_field": 1})
    assert p.crop_size == 48 and p.windows == 3
