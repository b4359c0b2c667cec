"""SDEdit, the baseline an editor is measured against: Stable Diffusion img2img from the output
caption on the editor's own base model, with the editor's sampler (Meng et al., ICLR 2022;
InstructPix2Pix compares against it in its Fig. 8)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from datagen.schedulers import make_scheduler
from datagen.shapes.models import resolve_model
from model.editor.sampling import DEFAULT_SCHEDULER
from model.training.loop import TRAIN_INFO_FILE, sd_base_model


def load_sdedit(base_model: str, device: torch.device, scheduler: str = DEFAULT_SCHEDULER):
    """SDEdit = Stable Diffusion img2img on the editor's base model, with the editor's sampler."""
    from diffusers import StableDiffusionImg2ImgPipeline

    # float32 on every part: a checkpoint saved in fp16 (ours) would otherwise load with an fp16
    # text encoder beside an fp32 VAE and fail in img2img's encode.
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
        resolve_model(base_model, "t2i"), torch_dtype=torch.float32, safety_checker=None,
        requires_safety_checker=False)
    pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def sdedit_batch(pipe, images: Sequence[Image.Image], captions: Sequence[str], strength: float, steps: int,
                 guidance: float, seeds: Sequence[int], batch_size: int = 8) -> list[Image.Image]:
    out: list[Image.Image] = []
    for k in range(0, len(images), batch_size):
        chunk = list(images[k : k + batch_size])
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[k : k + batch_size]]
        result = pipe(prompt=list(captions[k : k + batch_size]), image=chunk, strength=strength,
                      num_inference_steps=steps, guidance_scale=guidance, generator=gens).images
        out.extend(r if r.size == im.size else r.resize(im.size, Image.LANCZOS) for r, im in zip(result, chunk))
    return out


def base_model_of(editor_model: str, fallback: str) -> str:
    """The base an editor was trained from (its editsynth_train.json), else ``fallback``."""
    try:
        info = Path(resolve_model(editor_model, "editor")) / TRAIN_INFO_FILE
    except FileNotFoundError:
        return fallback
    if info.exists():
        # An editor retrained from an editor: SDEdit needs the Stable Diffusion at the chain's root.
        return sd_base_model(json.loads(info.read_text()), fallback)
    return fallback
