"""The pipeline factory of Stage 2: a Stable Diffusion 1.x/2.x checkpoint, ready to render.

``model`` is a Hugging Face hub id, a local diffusers directory, or ``shapes`` (the shipped
tiny model, datagen.shapes.models.resolve_model). Loading is the normal
``StableDiffusionPipeline.from_pretrained``; the scheduler is swapped for the one named in the
config. On CUDA: float16 (or the configured dtype) and channels-last; on CPU: float32. A
missing or unsuitable checkpoint fails here, at start, with the reason.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from datagen.schedulers import make_scheduler

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class CheckpointError(ValueError):
    """The configured model cannot be loaded or is not a text-to-image Stable Diffusion."""


@dataclass
class LoadedPipeline:
    pipe: object                  # diffusers.StableDiffusionPipeline
    model_id: str                 # as configured (recorded in every Candidate)
    source: str                   # the directory or hub id actually loaded
    device: torch.device
    dtype: torch.dtype


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CheckpointError("render.device is 'cuda' but torch sees no CUDA device")
    return torch.device(name)


def select_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: float16 on CUDA, float32 on CPU."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]
    if dtype == torch.float16 and device.type == "cpu":
        raise CheckpointError("render.dtype float16 is not supported on CPU; use float32 or bfloat16")
    return dtype


def resolve_source(model: str) -> str:
    """The directory or hub id to load for a configured model name."""
    from datagen.shapes.models import resolve_model

    try:
        source = resolve_model(model, "t2i")
    except FileNotFoundError as e:
        raise CheckpointError(str(e)) from None
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise CheckpointError(f"{source}: not a diffusers pipeline directory (no model_index.json); "
                                  "save one with StableDiffusionPipeline.save_pretrained")
        return str(path)
    if not _HUB_ID.match(source):
        raise CheckpointError(f"model {source!r}: no such directory, and not a hub id of the form owner/name")
    return source


def check_components(pipe, source: str) -> None:
    """Refuse checkpoints that are not a plain text-to-image Stable Diffusion."""
    missing = [n for n in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if getattr(pipe, n, None) is None]
    if missing:
        raise CheckpointError(f"{source}: not a Stable Diffusion pipeline (missing {', '.join(missing)})")
    unet, vae = pipe.unet.config, pipe.vae.config
    if unet.in_channels != vae.latent_channels:
        raise CheckpointError(
            f"{source}: the UNet takes {unet.in_channels} input channels but the VAE makes "
            f"{vae.latent_channels}-channel "
            "latents: an editing (InstructPix2Pix) or inpainting checkpoint, not text-to-image")
    width = pipe.text_encoder.config.hidden_size
    if unet.cross_attention_dim != width:
        raise CheckpointError(
            f"{source}: UNet cross-attention width {unet.cross_attention_dim} != text encoder width {width}")


def _dtype_kwarg(dtype: torch.dtype) -> dict:
    """Newer diffusers renamed ``torch_dtype`` to ``dtype``; pass the one this version takes."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401  (present since the rename)
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}


def load_pipeline(model: str, scheduler: str = "EulerAncestralDiscreteScheduler", device: str = "auto",
                  dtype: str = "auto") -> LoadedPipeline:
    from diffusers import StableDiffusionPipeline

    dev = select_device(device)
    torch_dtype = select_dtype(dtype, dev)
    source = resolve_source(model)
    try:
        pipe = StableDiffusionPipeline.from_pretrained(source, **_dtype_kwarg(torch_dtype), safety_checker=None,
                                                       feature_extractor=None, requires_safety_checker=False)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"cannot load Stable Diffusion checkpoint {model!r} ({source}): {e}") from e
    return prepare_pipeline(pipe, model, source, dev, torch_dtype, scheduler)


def prepare_pipeline(pipe, model_id: str, source: str, device: torch.device, dtype: torch.dtype,
                     scheduler: str = "EulerAncestralDiscreteScheduler") -> LoadedPipeline:
    """Check a loaded (or built) pipeline and put it on ``device`` ready to render."""
    check_components(pipe, source)
    try:
        pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    pipe.set_progress_bar_config(disable=True)
    for m in (pipe.unet, pipe.vae, pipe.text_encoder):
        if m.dtype != dtype:  # a pipeline built in memory (the benchmark's); loaded ones already are
            m.to(dtype)
    pipe.to(device)
    # SD's VAE overflows in float16 (config.force_upcast): decode in float32, as diffusers does.
    if dtype == torch.float16 and getattr(pipe.vae.config, "force_upcast", False):
        pipe.vae.to(torch.float32)
    if device.type == "cuda":
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    for m in (pipe.unet, pipe.vae, pipe.text_encoder):
        m.eval().requires_grad_(False)
    log.info("render model %s (%s) on %s, %s, %s", model_id, source, device, dtype, scheduler)
    return LoadedPipeline(pipe, model_id, source, device, dtype)
