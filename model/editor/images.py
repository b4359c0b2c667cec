"""Images from outside into the editor: upload checks before decoding, colour modes, edit size.

Untrusted bytes (the HTTP API, the web UI) go through ``read_upload``: the byte size, the
file type (sniffed from the magic bytes, not from a client's say-so) and the pixel count (from
the header alone) are checked before any pixel is decoded, so a decompression bomb or a
non-image costs nothing. Every refusal is an ``ImageRejected`` naming the problem.
"""
from __future__ import annotations

import io
import math
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

# Magic bytes of the formats we accept, and the PIL format name each one maps to.
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"WEBP", 8, "WEBP"),          # RIFF....WEBP
    (b"BM", 0, "BMP"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
)
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")


class ImageRejected(ValueError):
    """An image we will not edit; ``http_status`` is the 4xx a server should answer."""

    def __init__(self, message: str, http_status: int = 400):
        super().__init__(message)
        self.http_status = http_status


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int = 25 * 1024 * 1024
    max_pixels: int = 40_000_000           # ~ 6300 x 6300; edits run at ~0.26 MP anyway
    max_aspect_ratio: float = 8.0          # 8:1 is the most a 512 px edit holds (64 px short side)


def sniff_format(data: bytes) -> str | None:
    """The image format named by the file's magic bytes, or None."""
    for magic, offset, name in _MAGIC:
        if data[offset : offset + len(magic)] == magic and (name != "WEBP" or data[:4] == b"RIFF"):
            return name
    return None


def read_upload(data: bytes, limits: UploadLimits = UploadLimits()) -> Image.Image:
    """Check untrusted bytes, then decode them into an RGB image (or raise ImageRejected)."""
    if len(data) == 0:
        raise ImageRejected("the upload is empty (0 bytes); send a PNG, JPEG or WebP image", 400)
    if len(data) > limits.max_bytes:
        raise ImageRejected(f"the upload is {len(data):,} bytes; the limit is {limits.max_bytes:,}", 413)
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageRejected("not an image: the file is none of " + ", ".join(ACCEPTED_FORMATS), 415)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=[fmt])  # reads the header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # PIL's own check fires first and quotes PIL's limit; the user's limit is ours.
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(pixels.group(1)):,} pixels" if pixels else "more pixels than PIL allows"
        raise ImageRejected(f"image too large: {size}; the limit is {limits.max_pixels:,} "
                            f"(a decompression bomb looks like this)", 413) from None
    except Exception as e:  # noqa: BLE001 — any parser failure of untrusted bytes is a bad upload
        raise ImageRejected(f"a {fmt} file whose header cannot be read ({e})", 400) from None
    check_size(im.size, limits)
    try:
        im.load()
    except Exception as e:  # noqa: BLE001
        raise ImageRejected(f"truncated or corrupt {fmt} image: {e}", 400) from None
    return to_rgb(im)


def check_size(size: tuple[int, int], limits: UploadLimits) -> None:
    """Refuse zero-sized images, images over the pixel budget and extreme aspect ratios."""
    w, h = size
    if w < 1 or h < 1:
        raise ImageRejected(f"the image has no pixels ({w}x{h})", 400)
    if w * h > limits.max_pixels:
        raise ImageRejected(f"image too large: {w}x{h} = {w * h:,} pixels; the limit is "
                            f"{limits.max_pixels:,} (a decompression bomb looks like this)", 413)
    ratio = max(w, h) / min(w, h)
    if ratio > limits.max_aspect_ratio:
        raise ImageRejected(f"aspect ratio {ratio:.1f}:1 ({w}x{h}) is more extreme than the "
                            f"{limits.max_aspect_ratio:g}:1 the editor accepts; crop it first", 422)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB, upright: transparency over white, 16-bit scaled, CMYK converted."""
    im = ImageOps.exif_transpose(im) if im.getexif().get(0x0112, 1) != 1 else im
    if getattr(im, "n_frames", 1) > 1:
        im.seek(0)  # animations: the first frame
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grey (and PIL's 32-bit "I", which 16-bit PNGs open as): 0..65535 -> 0..255.
        arr = np.asarray(im, dtype=np.float64)
        arr = np.clip(arr / 257.0, 0, 255) if arr.max(initial=0) > 255 else np.clip(arr, 0, 255)
        return Image.fromarray(arr.round().astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        arr = arr * 255.0 if arr.max(initial=0) <= 1.0 else arr
        return Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return im.convert("RGB")
    except ValueError:
        raise ImageRejected(f"colour mode {mode} is not supported; send RGB, RGBA, greyscale or CMYK", 415) from None


def edit_size(width: int, height: int, resolution: int, multiple: int) -> tuple[int, int]:
    """The size InstructPix2Pix edits an image at (its edit_cli.py): long side to ``resolution``,
    short side rounded up and both sides down to multiples of ``multiple`` (64 for SD)."""
    if resolution < multiple:
        raise ValueError(f"resolution {resolution} is below the model's size multiple {multiple}")
    factor = resolution / max(width, height)
    factor = math.ceil(min(width, height) * factor / multiple) * multiple / min(width, height)
    # 1e-6: width * factor can land a hair under an exact multiple in floating point.
    w = int(width * factor / multiple + 1e-6) * multiple
    h = int(height * factor / multiple + 1e-6) * multiple
    return max(w, multiple), max(h, multiple)


def fit_for_edit(im: Image.Image, resolution: int, multiple: int) -> Image.Image:
    """Centre-crop to the edit size's aspect and resize (Lanczos), as the original does."""
    size = edit_size(im.width, im.height, resolution, multiple)
    if im.size == size:
        return im
    return ImageOps.fit(im, size, method=Image.Resampling.LANCZOS)
