"""``editsynth label``: a small local web page to label a random sample of candidates.

Shows each sampled candidate's before/after images, captions and instruction with good/bad
buttons; every click is written at once (atomically) to ``<run>/labels/labels.json``, which
``editsynth audit`` reads to measure the filter's precision and recall. Only candidates whose
images were kept can be shown; the scores are read one shard at a time, never whole. Standard library HTTP server, bound to 127.0.0.1 by default.
"""
from __future__ import annotations

import html
import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from datagen.store import RunStore

from .labels import LabelError, LabelFile
from .table import RunError, STAGE, image_pair, read_images_for, read_scores

log = logging.getLogger(__name__)

_ITEM_FIELDS = ("candidate_id", "triple_id", "instruction", "input_caption", "output_caption")

_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>editsynth labels: {run}</title>
<style>body{{font-family:system-ui,sans-serif;margin:20px}}.c{{border:1px solid #ccc;margin:8px 0;padding:8px;display:flex;gap:12px;align-items:center}}
.c img{{width:192px;height:192px;image-rendering:pixelated;border:1px solid #eee}}.c.good{{background:#e8f8e8}}.c.bad{{background:#fbe8e8}}
button{{font-size:15px;margin:3px;padding:4px 14px}}small{{color:#666}}</style></head><body>
<h1>Is each pair a correct edit?</h1><p>Run <code>{run}</code>: {n} candidates. Good = the after image shows the
instruction applied to the before image and nothing else changed. Labels are saved on every click to
<code>{path}</code>. <b id="done"></b></p><div id="list"></div>
<script>
async function main() {{
  const items = await (await fetch('/api/sample')).json();
  const list = document.getElementById('list');
  for (const it of items) {{
    const d = document.createElement('div'); d.className = 'c ' + (it.label || ''); d.id = 'c-' + it.candidate_id;
    d.innerHTML = `<img src="/img/${{it.candidate_id}}/input"><img src="/img/${{it.candidate_id}}/edited"><div>
      <b></b><br><small class="cap"></small><br><small>${{it.candidate_id}}</small><br>
      <button data-l="good">good</button><button data-l="bad">bad</button></div>`;
    d.querySelector('b').textContent = it.instruction;
    d.querySelector('.cap').textContent = it.input_caption + '  →  ' + it.output_caption;
    for (const b of d.querySelectorAll('button')) b.onclick = async () => {{
      const r = await fetch('/api/label', {{method: 'POST', headers: {{'Content-Type': 'application/json'}},
        body: JSON.stringify({{candidate_id: it.candidate_id, label: b.dataset.l}})}});
      if (r.ok) {{ d.className = 'c ' + b.dataset.l; document.getElementById('done').textContent =
        (await r.json()).labelled + ' labelled'; }}
    }};
    list.appendChild(d);
  }}
}}
main();
</script></body></html>"""


def sample_kept(store: RunStore, n: int, seed: int) -> pd.DataFrame:
    """``n`` candidates drawn at random from those with stored images, read one shard at a time.

    The draw is over positions in the run's table (shards in order), so it is the draw made
    when the whole table was read; only the shards holding a drawn candidate are read whole.
    """
    shards = store.done_shards(STAGE)
    names = [store.shard_name(STAGE, s, "parquet") for s in shards]
    kept = [int(pc.sum(store.read_arrow(n, columns=["images_kept"])["images_kept"]).as_py() or 0) if store.exists(n)
            else 0 for n in names]
    if not sum(kept):
        raise RunError(f"{store.location}: no candidate has stored images to label")
    rng = np.random.default_rng(seed)
    drawn = np.sort(rng.choice(sum(kept), size=min(n, sum(kept)), replace=False))
    starts = np.cumsum([0, *kept])
    frames = []
    for i, shard in enumerate(shards):
        local = drawn[(drawn >= starts[i]) & (drawn < starts[i + 1])] - starts[i]
        if len(local):
            rows = read_scores(store, columns=[*_ITEM_FIELDS, "images_kept"], shards=[shard])
            frames.append(rows[rows["images_kept"].astype(bool)].iloc[local])
    return pd.concat(frames, ignore_index=True)


class LabelServer:
    """The labelling page for a run; ``start()`` serves it in a thread, ``serve_forever()`` blocks."""

    def __init__(self, run: str | Path, n: int = 100, seed: int = 0, host: str = "127.0.0.1", port: int = 8765,
                 labels_path: str | Path | None = None):
        self.store = RunStore(run)
        if not self.store.done_shards(STAGE):
            raise RunError(f"{self.store.url('filter')} has no done shards: run the filter stage first")
        self.labels = LabelFile(self.store, labels_path)
        picked = sample_kept(self.store, n, seed)
        self.items = [{k: str(r[k]) for k in _ITEM_FIELDS} for _, r in picked.iterrows()]
        self.images: dict[str, tuple[bytes, bytes, str]] = {}
        for shard, g in picked.groupby("shard"):
            for cid, sample in read_images_for(self.store, int(shard), set(g["candidate_id"])).items():
                if (pair := image_pair(sample)) is not None:
                    self.images[cid] = pair
        self.httpd = ThreadingHTTPServer((host, port), self._handler())
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt, *args):  # quiet: one line per request is noise here
                log.debug(fmt, *args)

            def _send(self, status, body: bytes, ctype: str):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _json(self, status, obj):
                self._send(status, json.dumps(obj).encode(), "application/json")

            def do_GET(self):
                if self.path == "/":
                    page = _PAGE.format(run=html.escape(server.store.location), n=len(server.items),
                                        path=html.escape(str(server.labels.path)))
                    return self._send(HTTPStatus.OK, page.encode(), "text/html; charset=utf-8")
                if self.path == "/api/sample":
                    return self._json(HTTPStatus.OK, [
                        {**it, "label": server.labels.entries.get(it["candidate_id"], {}).get("label")}
                        for it in server.items])
                parts = self.path.strip("/").split("/")
                if len(parts) == 3 and parts[0] == "img" and parts[1] in server.images and parts[2] in ("input", "edited"):
                    b_in, b_out, ext = server.images[parts[1]]
                    mime = "image/jpeg" if ext in ("jpg", "jpeg") else f"image/{ext}"
                    return self._send(HTTPStatus.OK, b_in if parts[2] == "input" else b_out, mime)
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page {self.path}"})

            def do_POST(self):
                if self.path != "/api/label":
                    return self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint {self.path}"})
                try:
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                    cid = str(body.get("candidate_id", ""))
                    if cid not in server.images:
                        raise LabelError(f"candidate {cid!r} is not in this labelling sample")
                    server.labels.set(cid, str(body.get("label", "")))
                except (ValueError, LabelError) as e:
                    return self._json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
                self._json(HTTPStatus.OK, {"ok": True, "labelled": len(server.labels.entries)})

        return Handler

    def start(self) -> "LabelServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread:
            self._thread.join(timeout=5)
