"""Safe image input: decoding, mode conversion, folder walking, crops and sliding windows.

Conversion rule (one definition, used everywhere): every image becomes a float32 tensor of shape
(3, H, W) with values in [0, 1].

- 8-bit RGB is divided by 255. Grey (``L``, ``1``) is replicated to three channels.
- Palette images (``P``, ``PA``) are expanded through their palette.
- Alpha (``RGBA``, ``LA``, ``PA``) is dropped, never composited: compositing would rewrite pixels
  and with them the fingerprint.
- CMYK and YCbCr go through Pillow's own conversion to RGB.
- 16-bit images keep all 16 bits: values are divided by 65535. Pillow (>= 10) silently reduces
  16-bit RGB / RGBA PNG and TIFF (and grey+alpha PNG) to their high byte; fpt decodes those files
  a second time to recover the low byte (the fingerprint lives in the least significant bits),
  see :func:`_deep_array`. 16-bit grey (``I;16``) and 32-bit integer (``I``) images are divided by
  65535 and clipped (grey, replicated); float (``F``) images are clipped to [0, 1].
- EXIF orientation is **not** applied: rotating the pixel grid moves the fingerprint's spectrum.
- The first frame of animated / multi-page files is used.

Pillow's decompression-bomb guard is enforced as a hard error (not a warning) above
``max_pixels`` (default ``PIL.Image.MAX_IMAGE_PIXELS``).
"""

from __future__ import annotations

import io
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from fpt.errors import EmptyInputError, FptError, ImageError, InputError

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pnm"}
)
#: Smaller images carry too little spectrum to say anything about a fingerprint.
MIN_SIDE = 8
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


#: Raw modes that Pillow reduces to 8 bits (keeping the high byte of each sample), mapped to the
#: raw mode of opposite byte order. The decoders' filtering and strip handling depend only on the
#: raw mode's bits per pixel, so decoding the same data again with the swapped raw mode yields
#: the *low* byte of every sample. Covers 16-bit RGB / RGBA PNG (big-endian) and TIFF (either).
_SWAP_16 = {
    "RGB;16B": "RGB;16L",
    "RGB;16L": "RGB;16B",
    "RGBA;16B": "RGBA;16L",
    "RGBA;16L": "RGBA;16B",
    "RGB;16N": "RGB;16B" if sys.byteorder == "little" else "RGB;16L",
    "RGBA;16N": "RGBA;16B" if sys.byteorder == "little" else "RGBA;16L",
}


def _rawmode(tile) -> str | None:
    args = tile.args
    raw = args[0] if isinstance(args, tuple) and args else args
    return raw if isinstance(raw, str) else None


def _with_rawmode(tile, raw: str):
    args = tile.args
    return tile._replace(args=(raw, *args[1:]) if isinstance(args, tuple) else raw)


def _decode_with(path: Path, raws: list[str]) -> np.ndarray:
    """Decode ``path`` again with every tile's raw mode replaced; returns the uint16 array."""
    with Image.open(path) as again:
        again.tile = [_with_rawmode(t, r) for t, r in zip(again.tile, raws)]
        again.load()
        return np.asarray(again, dtype=np.uint16)


def _deep_array(path: Path, img: Image.Image) -> np.ndarray | None:
    """Full-precision float32 HxWx3 for 16-bit colour (PNG, TIFF) or grey+alpha PNG, else ``None``.

    ``img`` is the opened, not yet loaded image. Pillow (>= 10) has no 16-bit-per-channel RGB
    mode and keeps only the high byte; the fingerprint lives in the low bits, so fpt decodes the
    file a second time to recover the low byte (see ``_SWAP_16``).
    """
    if img.format not in ("PNG", "TIFF") or not img.tile:
        return None
    raws = [_rawmode(t) for t in img.tile]
    if len(set(raws)) != 1:
        return None
    raw = raws[0]
    if raw == "LA;16B" and img.format == "PNG":
        # Grey+alpha: decoding G_hi G_lo A_hi A_lo as 8-bit RGBA gives R = high, G = low byte.
        both = _decode_with(path, ["RGBA"] * len(raws))
        grey = both[..., 0] * 256 + both[..., 1]
        return (np.repeat(grey[..., None], 3, axis=2).astype(np.float32)) / np.float32(65535.0)
    if raw not in _SWAP_16:
        return None
    img.load()
    high = np.asarray(img, dtype=np.uint16)[..., :3]
    try:
        low = _decode_with(path, [_SWAP_16[raw]] * len(raws))[..., :3]
    except (OSError, ValueError) as exc:  # a codec that rejects the swapped raw mode
        warnings.warn(f"{path}: 16-bit image read at 8-bit precision ({exc})", stacklevel=3)
        return high.astype(np.float32) / np.float32(255.0)
    return (high * 256 + low).astype(np.float32) / np.float32(65535.0)


def _pil_to_array(img: Image.Image) -> np.ndarray:
    """Convert a decoded Pillow image to float32 HxWx3 in [0, 1] following the module rule."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64) / 65535.0
        arr = np.clip(arr, 0.0, 1.0)[..., None].repeat(3, axis=2)
    elif mode == "F":
        arr = np.clip(np.asarray(img, dtype=np.float64), 0.0, 1.0)[..., None].repeat(3, axis=2)
    else:
        if mode in ("P", "PA"):
            img = img.convert("RGBA")
        if img.mode in ("RGBA", "RGBa"):
            img = Image.merge("RGB", img.split()[:3])  # drop alpha, keep stored colours
        elif img.mode in ("LA", "La"):
            img = img.getchannel(0).convert("RGB")
        elif img.mode != "RGB":
            img = img.convert("RGB")
        arr = np.asarray(img, dtype=np.float32) / 255.0
    return np.ascontiguousarray(arr, dtype=np.float32)


def load_image_array(path: str | Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Load one image as float32 HxWx3 in [0, 1]; raise :class:`ImageError` with a one-line reason."""
    path = Path(path)
    if not path.exists():
        raise InputError("no such file", path=path, hint="check the path")
    if path.is_dir():
        raise InputError("is a folder, not an image", path=path)
    # Pillow warns above MAX_IMAGE_PIXELS and refuses outright above twice that. The warning is
    # made an error unless the caller explicitly allowed larger images.
    pillow_limit = Image.MAX_IMAGE_PIXELS
    strict = max_pixels is not None and (pillow_limit is None or max_pixels <= pillow_limit)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error" if strict else "ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if max_pixels is not None and w * h > max_pixels:
                    raise ImageError(
                        f"{w}x{h} px exceeds the decompression-bomb limit of {max_pixels} pixels",
                        path=path,
                        hint="refusing to decode; crop the image first if it is genuine",
                    )
                if min(w, h) < MIN_SIDE:
                    raise ImageError(f"image is {w}x{h} px; fpt needs at least {MIN_SIDE}x{MIN_SIDE}", path=path)
                img.seek(0)
                arr16 = _deep_array(path, img)
                if arr16 is not None:
                    arr = arr16
                else:
                    img.load()
                    arr = _pil_to_array(img)
    except FptError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(
            "image too large: refused by the decompression-bomb guard",
            path=path,
            hint=str(exc).split(",")[0],
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageError("not an image (or a format Pillow cannot read)", path=path) from exc
    except PermissionError as exc:
        raise InputError("permission denied", path=path, hint="check the file's read permission") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        msg = str(exc) or type(exc).__name__
        if "truncated" in msg.lower() or isinstance(exc, EOFError):
            raise ImageError("image file is truncated", path=path, hint="re-export or re-download it") from exc
        raise ImageError(f"cannot decode image ({msg})", path=path, hint="re-export it as PNG") from exc
    h, w = arr.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ImageError(f"image is {w}x{h} px; fpt needs at least {MIN_SIDE}x{MIN_SIDE}", path=path)
    return arr


def load_image(path: str | Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Load one image as a float32 tensor (3, H, W) in [0, 1]."""
    return torch.from_numpy(load_image_array(path, max_pixels=max_pixels)).permute(2, 0, 1).contiguous()


def find_images(paths: str | Path | Sequence[str | Path], *, recursive: bool = True) -> list[Path]:
    """Expand files and folders into a sorted, de-duplicated list of image files.

    Files named explicitly are kept whatever their extension (the decoder decides); folders are
    walked (recursively by default) keeping known image extensions. Raises
    :class:`EmptyInputError` when nothing is found and :class:`InputError` for missing paths.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            it = p.rglob("*") if recursive else p.glob("*")
            found.extend(sorted(q for q in it if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS))
        elif p.exists():
            found.append(p)
        else:
            raise InputError("no such file or folder", path=p, hint="check the path")
    seen: set[Path] = set()
    unique = [q for q in found if not (q in seen or seen.add(q))]
    if not unique:
        where = ", ".join(str(p) for p in paths)
        raise EmptyInputError(
            f"no images found in {where}",
            hint=f"expected files ending in {', '.join(sorted(IMAGE_EXTENSIONS))}",
        )
    return unique


@dataclass(frozen=True)
class LoadFailure:
    path: Path
    reason: str


def iter_images(
    paths: Iterable[Path], *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> Iterator[tuple[Path, torch.Tensor | LoadFailure]]:
    """Yield ``(path, tensor)`` per file, or ``(path, LoadFailure)`` for files that cannot be used.

    Batch commands use this to report per-file failures and carry on; memory stays bounded.
    """
    for p in paths:
        try:
            yield p, load_image(p, max_pixels=max_pixels)
        except FptError as exc:
            yield p, LoadFailure(p, exc.one_line())


# ---------------------------------------------------------------- crops and windows


def pad_to_min_size(img: torch.Tensor, size: int) -> tuple[torch.Tensor, bool]:
    """Mirror-tile ``img`` (..., H, W) so both sides are at least ``size``; returns (img, padded).

    Policy for images smaller than a window: symmetric (mirror) padding, repeated as often as
    needed, centred on the image. Mirroring keeps the image continuous at its border, so it adds
    no step edge; it does add periodicity at the image's own size, so results on padded images
    are flagged low-confidence by callers.
    """
    h, w = img.shape[-2:]
    if h >= size and w >= size:
        return img, False
    ph, pw = max(0, size - h), max(0, size - w)
    pads = [(0, 0)] * (img.dim() - 2) + [(ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)]
    arr = np.pad(img.detach().cpu().numpy(), pads, mode="symmetric")
    return torch.from_numpy(arr).to(img.device), True


def center_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """Centre ``size`` x ``size`` crop of (..., H, W); smaller images are mirror-padded first."""
    img, _ = pad_to_min_size(img, size)
    h, w = img.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return img[..., top : top + size, left : left + size]


def random_crop(img: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniformly placed ``size`` x ``size`` crop of (..., H, W); smaller images are mirror-padded."""
    img, _ = pad_to_min_size(img, size)
    h, w = img.shape[-2:]
    top = int(torch.randint(0, h - size + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - size + 1, (1,), generator=generator))
    return img[..., top : top + size, left : left + size]


def window_offsets(length: int, size: int, n: int) -> list[int]:
    """``n`` window starts spread evenly over ``length`` (first at 0, last flush with the end).

    Works for any ``length >= size`` — including ``size + 1``, where the authors' code crashed.
    Duplicate starts (short images) are kept so every image yields exactly ``n`` windows per axis.
    """
    if length < size:
        raise ValueError(f"length {length} < window {size}")
    if n == 1:
        return [(length - size) // 2]
    span = length - size
    return [round(i * span / (n - 1)) for i in range(n)]


def sliding_windows(img: torch.Tensor, size: int, n: int = 3) -> tuple[torch.Tensor, bool]:
    """An n x n grid of ``size`` crops of a (C, H, W) image, as (n*n, C, size, size).

    Returns ``(windows, low_confidence)``; ``low_confidence`` is True when the image was smaller
    than a window and had to be mirror-padded (see :func:`pad_to_min_size`).
    """
    img, padded = pad_to_min_size(img, size)
    h, w = img.shape[-2:]
    crops = [
        img[..., t : t + size, l : l + size]
        for t in window_offsets(h, size, n)
        for l in window_offsets(w, size, n)
    ]
    return torch.stack(crops), padded


# ---------------------------------------------------------------- file facts (case reports)


@lru_cache(maxsize=1)
def _ijg_luma_tables() -> np.ndarray:
    """Pillow's (libjpeg's) luminance quantisation table for every quality 1..100, (100, 64)."""
    tiny = Image.new("RGB", (8, 8))
    out = []
    for q in range(1, 101):
        buf = io.BytesIO()
        tiny.save(buf, "JPEG", quality=q)
        buf.seek(0)
        with Image.open(buf) as im:
            out.append(np.asarray(im.quantization[0], np.int64))
    return np.stack(out)


def jpeg_quality(quantization: dict[int, Sequence[int]]) -> tuple[int, bool]:
    """Estimate the IJG quality (1-100) from a JPEG's luminance quantisation table.

    Returns ``(quality, exact)``: ``exact`` when the table is libjpeg's own for that quality;
    cameras and editors with their own tables get the nearest quality (mean absolute difference).
    """
    luma = np.asarray(quantization[min(quantization)], np.int64)
    d = np.abs(_ijg_luma_tables() - luma[None, :]).mean(axis=1)
    q = int(np.argmin(d))
    return q + 1, bool(d[q] == 0)


@dataclass
class FileFacts:
    size_bytes: int | None
    sha256: str | None
    format: str | None
    width: int | None
    height: int | None
    jpeg_quality: tuple[int, bool] | None


def file_facts(path: Path) -> FileFacts:
    """Size, hash, container format, dimensions and JPEG quality of a file; what cannot be read is None."""
    from fpt.storage import file_sha256  # lazily: image loading itself needs no HDF5

    size = sha = fmt = w = h = quality = None
    try:
        size = path.stat().st_size
        sha = file_sha256(path)
    except OSError:
        pass
    try:
        with Image.open(path) as im:
            fmt, (w, h) = im.format, im.size
            if fmt == "JPEG" and getattr(im, "quantization", None):
                quality = jpeg_quality(im.quantization)
    except Exception:  # noqa: BLE001 - any decoder failure: the facts stay unknown, the load reports why
        pass
    return FileFacts(size, sha, fmt, w, h, quality)
