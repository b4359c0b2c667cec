"""Images from outside (model/editor/images.py): checks before decoding, colour modes, the edit size."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from model.editor.images import ImageRejected, UploadLimits, edit_size, read_upload, sniff_format

LIMITS = UploadLimits(max_bytes=2_000_000, max_pixels=4_000_000, max_aspect_ratio=8)


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height over almost no data: a decompression bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def rejection(data: bytes) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        read_upload(data, LIMITS)
    return info.value


def test_a_zero_byte_upload_is_a_400():
    e = rejection(b"")
    assert e.http_status == 400 and "empty" in str(e)


def test_a_non_image_is_a_415_naming_the_accepted_types():
    e = rejection(b"%PDF-1.7 this is not an image at all")
    assert e.http_status == 415 and "PNG" in str(e)


def test_too_many_bytes_is_a_413_before_anything_is_parsed():
    e = rejection(b"\x89PNG\r\n\x1a\n" + b"\0" * 2_000_000)
    assert e.http_status == 413 and "bytes" in str(e)


def test_a_decompression_bomb_is_refused_from_its_header():
    e = rejection(png_header_only(100_000, 100_000))
    assert e.http_status == 413 and "too large" in str(e)
    # A real small file that decodes to 9 MP: over this limit, refused by its header alone.
    e = rejection(encode(Image.new("1", (3000, 3000))))
    assert e.http_status == 413 and "9,000,000 pixels" in str(e)


def test_a_truncated_image_is_a_400():
    data = encode(Image.fromarray((np.random.RandomState(0).rand(64, 64, 3) * 255).astype(np.uint8)))
    e = rejection(data[: len(data) // 2])
    assert e.http_status == 400 and "truncated or corrupt" in str(e)


def test_an_extreme_aspect_ratio_is_a_422_naming_the_limit():
    e = rejection(encode(Image.new("RGB", (900, 10))))
    assert e.http_status == 422 and "90.0:1" in str(e) and "8:1" in str(e)


@pytest.mark.parametrize("make, fmt", [
    (lambda: Image.new("RGBA", (20, 10), (255, 0, 0, 0)), "PNG"),                 # fully transparent
    (lambda: Image.fromarray(np.full((8, 12), 65535, np.uint16)), "PNG"),         # 16-bit grey, white
    (lambda: Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"),              # CMYK red
    (lambda: Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"),                      # 1x1
    (lambda: Image.new("P", (6, 6), 3), "GIF"),                                   # palette
    (lambda: Image.new("RGB", (800, 100), (0, 0, 255)), "WEBP"),                  # 8:1 is allowed
])
def test_odd_but_valid_images_become_rgb(make, fmt):
    src = make()
    im = read_upload(encode(src, fmt), LIMITS)
    assert im.mode == "RGB" and im.size == src.size


def test_odd_modes_convert_to_the_colours_a_person_sees():
    transparent = read_upload(encode(Image.new("RGBA", (4, 4), (255, 0, 0, 0))), LIMITS)
    assert transparent.getpixel((0, 0)) == (255, 255, 255)          # over white
    grey16 = read_upload(encode(Image.fromarray(np.full((4, 4), 32896, np.uint16))), LIMITS)
    assert grey16.getpixel((0, 0)) == (128, 128, 128)               # 16-bit half grey -> 8-bit 128
    cmyk = read_upload(encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"), LIMITS)
    r, g, b = cmyk.getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60                             # CMYK red stays red


def test_sniffing_trusts_bytes_not_names():
    assert sniff_format(encode(Image.new("RGB", (2, 2)), "JPEG")) == "JPEG"
    assert sniff_format(b"RIFF\0\0\0\0WAVEfmt ") is None             # RIFF, but audio
    assert sniff_format(b"<svg xmlns=...") is None


@pytest.mark.parametrize("size, res, mult, expected", [
    ((512, 512), 512, 64, (512, 512)),
    ((640, 480), 512, 64, (512, 384)),      # long side to 512, sides multiples of 64
    ((480, 640), 512, 64, (384, 512)),
    ((1, 1), 512, 64, (512, 512)),
    ((800, 100), 512, 64, (512, 64)),       # short side rounded UP to 64
    ((1000, 333), 512, 64, (576, 192)),     # short side up to 192: the long side passes 512, as in the original
    ((60, 90), 64, 16, (48, 64)),           # the shapes editor: 64 px, multiple 16
])
def test_edit_size_follows_the_original(size, res, mult, expected):
    w, h = edit_size(*size, res, mult)
    assert (w, h) == expected and w % mult == 0 and h % mult == 0
