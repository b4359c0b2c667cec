"""Fixtures of Stage 4 (model/): a tiny random InstructPix2Pix editor built offline."""
from __future__ import annotations

import pytest


def build_tiny_editor_pipeline(seed: int = 0):
    """A random StableDiffusionInstructPix2PixPipeline of the shapes "test" preset (8-channel UNet)."""
    import torch
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

    from datagen.shapes.models import (T2I_PRESETS, build_scheduler, build_text_encoder, build_tokenizer,
                                       build_unet, build_vae)

    p = T2I_PRESETS["test"]
    torch.manual_seed(seed)
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=build_vae(p), text_encoder=build_text_encoder(p), tokenizer=build_tokenizer(p.context_length),
        unet=build_unet(p, in_channels=2 * p.latent_channels),
        scheduler=EulerAncestralDiscreteScheduler.from_config(build_scheduler().config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def tiny_editor_dir(tmp_path_factory):
    """A random tiny InstructPix2Pix editor saved as a standard diffusers directory."""
    path = tmp_path_factory.mktemp("tiny-editor")
    build_tiny_editor_pipeline(seed=0).save_pretrained(path)
    return path


# ---------------------------------------------------------------------------------------
# A real `editsynth serve` on 127.0.0.1 with the tiny editor, shared by the test_serve_* modules.
# ---------------------------------------------------------------------------------------
SERVER_ARGS = ["--steps", "3", "--max-queue", "2", "--max-upload-mb", "2", "--max-pixels", "4000000",
               "--timeout", "60", "--device", "cpu"]


class RunningServer:
    def __init__(self, url: str, proc, log_path):
        self.url, self.proc, self.log_path = url, proc, log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def editor_server(tiny_editor_dir, tmp_path_factory):
    """`python -m model.serving.cli serve` in its own process; torn down at the end of the session.
    EDITSYNTH_SERVE_MODEL=shapes serves the shipped shapes editor instead of the tiny random one
    (with EDITSYNTH_SCREENSHOT=docs/serve.png: the README's screenshot)."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    import httpx

    tmp = tmp_path_factory.mktemp("serve")
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
           "GRADIO_TEMP_DIR": str(tmp / "gradio"), "TMPDIR": str(tmp)}
    log_path = tmp / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "model.serving.cli", "serve",
             "--model", os.environ.get("EDITSYNTH_SERVE_MODEL", str(tiny_editor_dir)),
             "--port", str(port), *SERVER_ARGS],
            cwd=Path(__file__).resolve().parents[2], env=env, stdout=log, stderr=subprocess.STDOUT)
    server = RunningServer(f"http://127.0.0.1:{port}", proc, log_path)
    deadline = time.monotonic() + 180
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}:\n{server.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer /api/health in 180 s:\n{server.log()[-3000:]}")
            try:
                if httpx.get(server.url + "/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture
def editor_passes(monkeypatch):
    """Every editor pass the oracle eval makes, as (instructions, s_T, s_I), in order."""
    from model.evaluation import oracle

    passes = []
    real_edit_batch = oracle.edit_batch

    def recording(editor, inputs, instructions, steps, s_text, s_img, *rest):
        passes.append((list(instructions), s_text, s_img))
        return real_edit_batch(editor, inputs, instructions, steps, s_text, s_img, *rest)

    monkeypatch.setattr(oracle, "edit_batch", recording)
    return passes


def scales_of(passes) -> list[tuple[float, float]]:
    return [(s_text, s_img) for _, s_text, s_img in passes]
