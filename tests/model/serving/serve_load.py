"""Sample uploads (good, odd, bad) and a load client that sends a mix of them from its own process.

    python -m tests.model.serving.serve_load http://127.0.0.1:PORT [--requests 36] [--threads 6]

prints one JSON object: per request its kind, the status it got and the statuses allowed.
"""
from __future__ import annotations

import argparse
import io
import json
import socket
import struct
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import numpy as np
from PIL import Image


def encode(im: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def noise_png(w: int = 40, h: int = 30, seed: int = 0) -> bytes:
    return encode(Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8)))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height over almost no data: a decompression bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# Bad uploads against a server started with --max-upload-mb 2 --max-pixels 4000000.
BAD_UPLOADS: dict[str, tuple[bytes, int]] = {
    "zero-byte": (b"", 400),
    "not-an-image": (b"just some text, honestly\n" * 10, 415),
    "truncated": (noise_png(64, 64)[:600], 400),
    "bomb-header": (png_header_only(100_000, 100_000), 413),
    "bomb-real": (encode(Image.new("1", (3000, 3000))), 413),
    "too-many-bytes": (b"\x89PNG\r\n\x1a\n" + bytes(3 * 1024 * 1024), 413),
    "aspect-90-to-1": (encode(Image.new("RGB", (900, 10))), 422),
}

ODD_UPLOADS: dict[str, bytes] = {
    "rgba": encode(Image.new("RGBA", (20, 12), (255, 0, 0, 128))),
    "grey-16bit": encode(Image.fromarray((np.arange(24 * 16).reshape(16, 24) * 170).astype(np.uint16))),
    "cmyk-jpeg": encode(Image.new("CMYK", (16, 24), (0, 255, 255, 0)), "JPEG"),
    "one-pixel": encode(Image.new("RGB", (1, 1), (10, 200, 30))),
    "wide-8-to-1": encode(Image.new("RGB", (160, 20), (0, 0, 255))),
}


def hang_up(url: str) -> None:
    """Announce a 1 MB multipart body, send a few bytes of it, and disconnect."""
    u = urlparse(url)
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.sendall(b"POST /api/edit HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                  b"Content-Length: 1000000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"image\"; "
                  b"filename=\"a.png\"\r\n\r\n\x89PNG")


def one_request(url: str, kind: str) -> dict:
    import httpx

    form = {"instruction": "make it red", "steps": "2", "seed": "1"}
    try:
        if kind == "good":
            r = httpx.post(f"{url}/api/edit", files={"image": ("a.png", noise_png())}, data=form, timeout=90)
            return {"kind": kind, "status": r.status_code, "allowed": [200, 503]}
        if kind == "hang-up":
            hang_up(url)
            return {"kind": kind, "status": None, "allowed": [None]}
        if kind == "bad-steps":
            r = httpx.post(f"{url}/api/edit", files={"image": ("a.png", noise_png())},
                           data={**form, "steps": "0"}, timeout=30)
            return {"kind": kind, "status": r.status_code, "allowed": [422]}
        if kind == "bad-base64":
            r = httpx.post(f"{url}/api/edit/json", json={"image_base64": "###", "instruction": "x"}, timeout=30)
            return {"kind": kind, "status": r.status_code, "allowed": [400]}
        data, status = BAD_UPLOADS[kind]
        r = httpx.post(f"{url}/api/edit", files={"image": ("upload.png", data)}, data=form, timeout=30)
        return {"kind": kind, "status": r.status_code, "allowed": [status]}
    except Exception as e:  # noqa: BLE001 — a hang or a reset is a result to report, not to hide
        return {"kind": kind, "status": f"{type(e).__name__}: {e}", "allowed": [None] if kind == "hang-up" else []}


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--requests", type=int, default=36)
    p.add_argument("--threads", type=int, default=6)
    args = p.parse_args(argv)
    kinds = ["good", *BAD_UPLOADS, "bad-steps", "bad-base64", "hang-up"]
    plan = [kinds[i % len(kinds)] for i in range(args.requests)]
    with ThreadPoolExecutor(args.threads) as pool:
        results = list(pool.map(lambda k: one_request(args.url, k), plan))
    json.dump({"results": results}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
