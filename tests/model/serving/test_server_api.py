"""The HTTP API of ``editsynth serve`` (model/serving/server.py), driven by real clients over loopback:
httpx for /api, Gradio's own client for the UI endpoint, and a load from another process."""
from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.model.serving.serve_load import BAD_UPLOADS, ODD_UPLOADS, noise_png

REPO = Path(__file__).resolve().parents[3]


def edit(url: str, data: bytes, timeout: float = 60, **form) -> httpx.Response:
    fields = {"instruction": "make it red", "seed": "1", **{k: str(v) for k, v in form.items()}}
    return httpx.post(f"{url}/api/edit", files={"image": ("in.png", data)}, data=fields, timeout=timeout)


def test_health_model_info_and_openapi_docs(editor_server):
    url = editor_server.url
    health = httpx.get(f"{url}/api/health").json()
    assert health["status"] == "ok" and health["queue_capacity"] == 2
    info = httpx.get(f"{url}/api/model").json()
    assert info["resolution"] == 32 and info["size_multiple"] == 4 and info["device"] == "cpu"
    assert info["defaults"]["steps"] == 3 and info["max_pixels"] == 4_000_000
    assert (info["defaults"]["text_guidance"], info["defaults"]["image_guidance"]) == (7.5, 1.5)  # no edit_config
    paths = httpx.get(f"{url}/openapi.json").json()["paths"]
    assert {"/api/edit", "/api/edit/json", "/api/health", "/api/model"} <= set(paths)
    assert httpx.get(f"{url}/docs").status_code == 200


def test_edit_returns_a_png_of_the_inputs_size_and_is_reproducible_by_seed(editor_server):
    png = noise_png(50, 30)
    r = edit(editor_server.url, png, seed=7)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.headers["x-seed"] == "7"
    out = Image.open(io.BytesIO(r.content))
    assert out.size == (50, 30) and out.mode == "RGB"
    assert edit(editor_server.url, png, seed=7).content == r.content
    assert edit(editor_server.url, png, seed=8).content != r.content


def test_edit_answers_base64_variations_and_json_bodies(editor_server):
    url, png = editor_server.url, noise_png(32, 32)
    r = edit(url, png, seed=3, variations=2, response_format="base64")
    body = r.json()
    assert r.status_code == 200 and body["seeds"] == [3, 4] and len(body["images_base64"]) == 2
    assert body["images_base64"][0] != body["images_base64"][1]
    single = edit(url, png, seed=3).content
    assert base64.b64decode(body["images_base64"][0]) == single
    r = httpx.post(f"{url}/api/edit/json", json={"image_base64": base64.b64encode(png).decode(),
                                                  "instruction": "make it red", "seed": 3}, timeout=60)
    assert r.status_code == 200 and base64.b64decode(r.json()["images_base64"][0]) == single


@pytest.mark.parametrize("kind", list(BAD_UPLOADS))
def test_a_bad_upload_gets_a_clear_4xx(editor_server, kind):
    data, status = BAD_UPLOADS[kind]
    r = edit(editor_server.url, data)
    assert r.status_code == status, r.text
    assert r.json()["detail"]  # a message naming the problem


def test_a_body_without_a_length_is_cut_off_at_the_limit(editor_server):
    def chunks():  # a 4 MB file part, chunked: no Content-Length to refuse it by
        yield (b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
               b"Content-Type: image/png\r\n\r\n\x89PNG\r\n\x1a\n")
        for _ in range(40):
            yield b"\0" * 100_000

    r = httpx.post(f"{editor_server.url}/api/edit", content=chunks(), timeout=30,
                   headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413


def test_bad_parameters_get_a_422_naming_the_field(editor_server):
    r = edit(editor_server.url, noise_png(), steps=0)
    assert r.status_code == 422 and "steps" in r.text
    r = httpx.post(f"{editor_server.url}/api/edit", files={"image": ("a.png", noise_png())}, timeout=30)
    assert r.status_code == 422 and "instruction" in r.text
    r = httpx.post(f"{editor_server.url}/api/edit/json", json={"image_base64": "%%%", "instruction": "x"})
    assert r.status_code == 400 and "base64" in r.text


def _details(r: httpx.Response) -> str:
    return " ".join(item["msg"] for item in r.json()["detail"])


@pytest.mark.parametrize("instruction", ["", "   ", "\t \n"])
def test_a_blank_instruction_is_refused_by_name_on_both_routes(editor_server, instruction):
    r = edit(editor_server.url, noise_png(), instruction=instruction)
    assert r.status_code == 422 and "instruction: empty or only spaces" in _details(r), r.text
    r = httpx.post(f"{editor_server.url}/api/edit/json", timeout=30,
                   json={"image_base64": base64.b64encode(noise_png()).decode(), "instruction": instruction})
    assert r.status_code == 422 and "instruction: empty or only spaces" in _details(r), r.text


def test_a_missing_instruction_is_told_apart_from_an_empty_one(editor_server):
    r = httpx.post(f"{editor_server.url}/api/edit", files={"image": ("a.png", noise_png())}, timeout=30)
    assert r.status_code == 422 and "instruction: missing" in _details(r)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_guidance_that_is_not_a_finite_number_names_the_field_and_its_range(editor_server, value):
    r = edit(editor_server.url, noise_png(), image_guidance=value)
    assert r.status_code == 422
    assert "image_guidance: Input should be a finite number (allowed: a number from 0 to 30)" in _details(r)
    body = ('{"image_base64": "%s", "instruction": "make it red", "text_guidance": %s}'
            % (base64.b64encode(noise_png()).decode(), {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}[value]))
    r = httpx.post(f"{editor_server.url}/api/edit/json", content=body, timeout=30,
                   headers={"content-type": "application/json"})
    assert r.status_code == 422 and "text_guidance: Input should be a finite number" in _details(r)


def test_a_422_names_the_limit_without_echoing_a_large_input(editor_server):
    r = edit(editor_server.url, noise_png(), instruction="x" * 10_000)
    assert r.status_code == 422 and len(r.content) < 600, len(r.content)
    assert "instruction: String should have at most 1000 characters" in _details(r)
    r = edit(editor_server.url, noise_png(), steps=5000)
    assert r.status_code == 422 and r.json()["detail"][0]["input"] == "5000"      # short inputs still shown
    assert "steps: Input should be less than or equal to" in _details(r)


def test_a_decompression_bomb_is_refused_with_the_servers_own_pixel_limit(editor_server):
    data, _ = BAD_UPLOADS["bomb-header"]
    r = edit(editor_server.url, data)
    assert r.status_code == 413
    assert "10,000,000,000 pixels; the limit is 4,000,000" in r.json()["detail"]      # --max-pixels 4000000
    assert "178" not in r.json()["detail"]                                            # not PIL's limit


@pytest.mark.parametrize("kind", list(ODD_UPLOADS))
def test_odd_but_valid_images_are_converted_and_edited(editor_server, kind):
    data = ODD_UPLOADS[kind]
    r = edit(editor_server.url, data)
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(r.content)).size == Image.open(io.BytesIO(data)).size


def test_a_full_queue_answers_503_at_once_and_never_hangs(editor_server):
    """Six slow edits at once on a queue of 2: some are served, the rest told to come back."""
    results: list[httpx.Response] = []
    lock = threading.Lock()

    def slow_edit():
        r = edit(editor_server.url, noise_png(), steps=60, timeout=90)
        with lock:
            results.append(r)

    threads = [threading.Thread(target=slow_edit) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a request hung"
    codes = sorted(r.status_code for r in results)
    assert set(codes) <= {200, 503} and 200 in codes and 503 in codes, codes
    busy = next(r for r in results if r.status_code == 503)
    assert busy.headers["retry-after"] and "queue is full" in busy.json()["detail"]


def test_a_mixed_load_from_another_process_leaves_the_server_healthy_and_correct(editor_server):
    url = editor_server.url
    reference = edit(url, noise_png(40, 30), seed=11).content
    proc = subprocess.run([sys.executable, "-m", "tests.model.serving.serve_load", url, "--requests", "36",
                           "--threads", "6"], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout)["results"]
    wrong = [r for r in results if r["status"] not in r["allowed"]]
    assert not wrong, wrong
    assert any(r["kind"] == "good" and r["status"] == 200 for r in results)
    assert editor_server.proc.poll() is None
    assert httpx.get(f"{url}/api/health").json()["status"] == "ok"
    assert edit(url, noise_png(40, 30), seed=11).content == reference


def test_the_ui_endpoint_through_gradios_own_client_chains_and_undoes(editor_server, tmp_path):
    from gradio_client import Client, handle_file

    src = tmp_path / "in.png"
    src.write_bytes(noise_png(36, 28))
    client = Client(f"{editor_server.url}/ui/", verbose=False, download_files=str(tmp_path / "dl"))
    first = client.predict(handle_file(str(src)), "make it red", 7.5, 1.5, 3, 5, False, api_name="/edit")
    compare, gallery, download, status, seed = first
    assert seed == 5 and "1 edit(s)" in status and len(gallery) == 2
    edited = Image.open(download["value"] if isinstance(download, dict) else download)
    assert edited.size == (36, 28)
    api = edit(editor_server.url, src.read_bytes(), seed=5)   # the UI and the API give the same edit
    assert np.abs(np.asarray(edited, np.int16) - np.asarray(Image.open(io.BytesIO(api.content)), np.int16)).max() <= 1

    second = client.predict(handle_file(str(src)), "add a hat", 7.5, 1.5, 3, 5, False, api_name="/edit")
    assert len(second[1]) == 3 and second[1][2]["caption"].endswith("add a hat")
    undone = client.predict(api_name="/undo")
    assert len(undone[1]) == 2 and "make it red" in undone[3]


def test_serve_binds_loopback_and_opens_no_share_link_unless_asked(editor_server):
    import argparse
    from urllib.parse import urlparse

    import psutil

    from model.serving.cli import register

    # The running server (started with the defaults) listens on loopback only, on its port.
    port = urlparse(editor_server.url).port
    listening = [c.laddr for c in psutil.Process(editor_server.proc.pid).net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening and {addr.ip for addr in listening} == {"127.0.0.1"}, listening
    assert port in {addr.port for addr in listening}
    assert "gradio.live" not in editor_server.log()
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["serve"]).share is False
    assert parser.parse_args(["serve", "--share"]).share is True