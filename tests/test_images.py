"""Safe image input: modes, bit depths, bad files, folder walking, crops and windows."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fpt.errors import EmptyInputError, ImageError, InputError
from fpt.images import (
    MIN_SIDE,
    LoadFailure,
    center_crop,
    find_images,
    iter_images,
    load_image,
    load_image_array,
    pad_to_min_size,
    random_crop,
    sliding_windows,
    window_offsets,
)


def write_png(path: Path, arr: np.ndarray, color_type: int, bit_depth: int, *, height: int | None = None, width: int | None = None) -> Path:
    """Minimal PNG writer (filter 0) so we control bit depth exactly; Pillow cannot write 16-bit RGB."""
    h, w = arr.shape[:2]
    dt = ">u2" if bit_depth == 16 else "u1"
    raw = b"".join(b"\x00" + row.astype(dt).tobytes() for row in arr)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width or w, height or h, bit_depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def write_tiff16(path: Path, arr: np.ndarray, *, big_endian: bool = False) -> Path:
    """Minimal uncompressed 16-bit RGB / RGBA TIFF writer (one strip); Pillow cannot write these."""
    h, w, c = arr.shape
    e = ">" if big_endian else "<"
    data = arr.astype(e + "u2").tobytes()
    bps = struct.pack(e + "H" * c, *([16] * c))
    data_off = 8 + len(bps)
    tags = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, c, 8), (259, 3, 1, 1), (262, 3, 1, 2),
            (273, 4, 1, data_off), (277, 3, 1, c), (278, 4, 1, h), (279, 4, 1, len(data)), (284, 3, 1, 1)]
    if c == 4:
        tags.append((338, 3, 1, 2))  # unassociated alpha
    ifd = struct.pack(e + "H", len(tags))
    for tag, typ, cnt, val in sorted(tags):
        ifd += struct.pack(e + "HHIHH", tag, typ, cnt, val, 0) if typ == 3 and cnt == 1 else struct.pack(e + "HHII", tag, typ, cnt, val)
    head = (b"MM" if big_endian else b"II") + struct.pack(e + "HI", 42, data_off + len(data))
    path.write_bytes(head + bps + data + ifd + struct.pack(e + "I", 0))
    return path


@pytest.mark.parametrize("big_endian, channels", [(False, 3), (True, 3), (False, 4)], ids=["le-rgb", "be-rgb", "le-rgba"])
def test_16bit_tiff_keeps_all_16_bits(tmp_path, rng, big_endian, channels):
    data = rng.integers(0, 65536, (10, 12, channels))
    write_tiff16(tmp_path / "x.tif", data, big_endian=big_endian)
    with Image.open(tmp_path / "x.tif") as im:
        assert im.mode in ("RGB", "RGBA")  # what Pillow gives: 8 bits per channel
    arr = load_image_array(tmp_path / "x.tif")
    np.testing.assert_allclose(arr * 65535.0, data[..., :3], atol=0.01)


@pytest.fixture
def rgb8(rng) -> np.ndarray:
    return rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)


# ------------------------------------------------------------------ modes and bit depths


def test_rgb8_exact(tmp_path, rgb8):
    Image.fromarray(rgb8).save(tmp_path / "a.png")
    t = load_image(tmp_path / "a.png")
    assert t.shape == (3, 24, 20) and t.dtype == torch.float32
    assert torch.equal(t, torch.from_numpy(rgb8).permute(2, 0, 1).float() / 255.0)


@pytest.mark.parametrize(
    "color_type, channels",
    [(2, 3), (6, 4), (0, 1), (4, 2)],
    ids=["rgb16", "rgba16", "grey16", "grey-alpha16"],
)
def test_16bit_png_keeps_all_16_bits(tmp_path, rng, color_type, channels):
    # Pillow reduces 16-bit colour PNGs to their high byte; fpt must recover the low byte too.
    data = rng.integers(0, 65536, (16, 12, channels))
    if channels == 1:
        data = data[..., 0]
    write_png(tmp_path / "x.png", data, color_type, 16)
    arr = load_image_array(tmp_path / "x.png")
    assert arr.shape == (16, 12, 3)
    colour = data[..., :3] if channels >= 3 else np.repeat((data if channels == 1 else data[..., 0])[..., None], 3, 2)
    np.testing.assert_allclose(arr * 65535.0, colour, atol=0.01)
    # Low bytes really are there: values are not multiples of 257 (what 8-bit scaling gives).
    assert np.any(np.round(arr * 65535.0) % 257 != 0)


def test_grey_replicated(tmp_path, rgb8):
    g = rgb8[..., 0]
    Image.fromarray(g, mode="L").save(tmp_path / "g.png")
    t = load_image(tmp_path / "g.png")
    assert torch.equal(t[0], t[1]) and torch.equal(t[1], t[2])
    assert torch.equal(t[0], torch.from_numpy(g).float() / 255.0)


def test_rgba_alpha_dropped_not_composited(tmp_path, rgb8):
    alpha = np.zeros(rgb8.shape[:2], dtype=np.uint8)  # fully transparent: compositing would blank it
    Image.fromarray(np.dstack([rgb8, alpha]), mode="RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_image_array(tmp_path / "a.png"), rgb8 / np.float32(255.0))


@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_palette_expanded_through_palette(tmp_path, suffix):
    palette = [255, 0, 0, 0, 128, 255, 10, 20, 30] + [0] * (256 * 3 - 9)
    idx = np.tile(np.array([[0, 1, 2, 1]], dtype=np.uint8), (12, 3))
    im = Image.fromarray(idx, mode="P")
    im.putpalette(palette)
    im.save(tmp_path / f"p{suffix}")
    arr = load_image_array(tmp_path / f"p{suffix}")
    pal = np.array(palette[:9], dtype=np.float32).reshape(3, 3) / 255.0
    np.testing.assert_allclose(arr, pal[idx], atol=1e-7)


def test_cmyk_jpeg_becomes_rgb(tmp_path, rgb8):
    smooth = np.full((32, 32, 3), (200, 60, 30), dtype=np.uint8)
    Image.fromarray(smooth).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    with Image.open(tmp_path / "c.jpg") as im:
        assert im.mode == "CMYK"
    arr = load_image_array(tmp_path / "c.jpg")
    assert arr.shape == (32, 32, 3)
    np.testing.assert_allclose(arr.mean(axis=(0, 1)), np.array([200, 60, 30]) / 255.0, atol=0.03)


def test_exif_orientation_not_applied(tmp_path, rgb8):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW" — applying it would move the fingerprint's spectrum
    Image.fromarray(rgb8).save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    t = load_image(tmp_path / "r.jpg")
    assert t.shape == (3, 24, 20)  # stored pixel grid, not the rotated 20x24


def test_other_formats(tmp_path, rgb8):
    big = np.kron(rgb8, np.ones((2, 2, 1), dtype=np.uint8))
    for suffix in (".bmp", ".tif", ".webp"):
        kwargs = {"lossless": True} if suffix == ".webp" else {}
        Image.fromarray(big).save(tmp_path / f"x{suffix}", **kwargs)
        np.testing.assert_array_equal(load_image_array(tmp_path / f"x{suffix}"), big / np.float32(255.0))


# ------------------------------------------------------------------ bad inputs


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_image(tmp_path / "nope.png")


def test_text_named_png(tmp_path):
    (tmp_path / "t.png").write_text("this is not an image\n")
    with pytest.raises(ImageError, match="not an image"):
        load_image(tmp_path / "t.png")


def test_empty_file(tmp_path):
    (tmp_path / "e.png").write_bytes(b"")
    with pytest.raises(ImageError, match="not an image"):
        load_image(tmp_path / "e.png")


def test_truncated_png(tmp_path, rng):
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated"):
        load_image(tmp_path / "t.png")


def test_one_pixel_image(tmp_path):
    Image.new("RGB", (1, 1)).save(tmp_path / "one.png")
    with pytest.raises(ImageError, match=f"1x1 px; fpt needs at least {MIN_SIDE}x{MIN_SIDE}"):
        load_image(tmp_path / "one.png")


def test_decompression_bomb_header_only(tmp_path):
    # A 30000x30000 header with almost no data: refused before any decoding.
    write_png(tmp_path / "bomb.png", np.zeros((1, 1), dtype=np.uint8), 0, 8, height=30000, width=30000)
    with pytest.raises(ImageError, match="decompression-bomb"):
        load_image(tmp_path / "bomb.png")


def test_max_pixels_limit(tmp_path, rgb8):
    Image.fromarray(rgb8).save(tmp_path / "a.png")
    with pytest.raises(ImageError, match="exceeds the decompression-bomb limit of 100 pixels"):
        load_image(tmp_path / "a.png", max_pixels=100)


def test_folder_is_not_an_image(tmp_path):
    with pytest.raises(InputError, match="is a folder"):
        load_image(tmp_path)


# ------------------------------------------------------------------ folders


def test_find_images_recursive_sorted_filtered(tmp_path, rgb8):
    (tmp_path / "b" / "deep").mkdir(parents=True)
    for p in ["z.png", "a.JPG", "b/deep/c.webp", "b/x.PNG"]:
        (tmp_path / p).write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("n")
    found = find_images(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a.JPG", "b/deep/c.webp", "b/x.PNG", "z.png"]
    assert [p.name for p in find_images(tmp_path, recursive=False)] == ["a.JPG", "z.png"]
    # A file named explicitly is kept whatever its extension; duplicates are dropped.
    assert find_images([tmp_path / "notes.txt", tmp_path / "notes.txt"]) == [tmp_path / "notes.txt"]


def test_find_images_empty_and_missing(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(EmptyInputError, match="no images found"):
        find_images(tmp_path)
    with pytest.raises(InputError, match="no such file or folder"):
        find_images(tmp_path / "missing")


def test_iter_images_collects_failures(tmp_path, rgb8):
    Image.fromarray(rgb8).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_text("nope")
    out = dict(iter_images(find_images(tmp_path)))
    assert isinstance(out[tmp_path / "bad.png"], LoadFailure)
    assert "not an image" in out[tmp_path / "bad.png"].reason
    assert out[tmp_path / "ok.png"].shape == (3, 24, 20)


# ------------------------------------------------------------------ crops and windows


def test_center_and_random_crop():
    img = torch.arange(3 * 10 * 12, dtype=torch.float32).view(3, 10, 12)
    assert torch.equal(center_crop(img, 4), img[:, 3:7, 4:8])
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a, b = random_crop(img, 6, g1), random_crop(img, 6, g2)
    assert a.shape == (3, 6, 6) and torch.equal(a, b)


@pytest.mark.parametrize("length", [128, 129, 130, 255, 500])
def test_window_offsets_cover_image(length):
    offs = window_offsets(length, 128, 3)
    assert len(offs) == 3 and offs[0] == 0 and offs[-1] == length - 128
    assert offs == sorted(offs)


def test_sliding_windows_window_plus_one():
    # The authors' code crashed at window + 1 px; we must not.
    img = torch.rand(3, 129, 129)
    w, low = sliding_windows(img, 128, n=3)
    assert w.shape == (9, 3, 128, 128) and not low
    assert torch.equal(w[-1], img[:, 1:, 1:])


def test_sliding_windows_small_image_is_mirror_padded_and_flagged():
    img = torch.rand(3, 40, 50)
    w, low = sliding_windows(img, 64, n=3)
    assert w.shape == (9, 3, 64, 64) and low
    # The original pixels sit in the middle of the padded window, unchanged.
    assert torch.equal(w[0][:, 12:52, 7:57], img)


def test_pad_to_min_size_much_smaller_than_window():
    img = torch.rand(1, 3, 8, 8)
    out, padded = pad_to_min_size(img, 128)
    assert padded and out.shape == (1, 3, 128, 128)
    assert torch.isfinite(out).all()
