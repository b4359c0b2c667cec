"""Dual classifier-free guidance sampling of an InstructPix2Pix editor, as in
InstructPix2Pix (Brooks, Holynski, Efros, CVPR 2023).

One UNet pass per step holds three copies of the batch — (text + image), (image only),
(neither) — and the guided noise prediction is

    e = e_none + s_T (e_text_img - e_img) + s_I (e_img - e_none).

The image condition is the VAE latent mode of the input, unscaled; the null image is a zero
latent and the null text the encoding of "". Euler ancestral by default; any diffusers
scheduler by class name. ``edit_images`` is the one entry point for the CLI, the server and
evaluation: PIL images in, PIL images of the same sizes out.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from PIL import Image

from datagen.records import seed_from
from datagen.schedulers import make_scheduler, step_kwargs

from .images import fit_for_edit, to_rgb
from .loading import Editor, as_editor

DEFAULT_SCHEDULER = "EulerAncestralDiscreteScheduler"


PAPER_GUIDANCE = {"text_guidance": 7.5, "image_guidance": 1.5}   # the paper's sampling defaults


@dataclass
class EditSettings:
    """How to sample one edit. A guidance scale left None is the editor's own (its edit_config.json),
    else the original's (PAPER_GUIDANCE); ``for_editor`` fills them in."""

    text_guidance: float | None = None    # s_T
    image_guidance: float | None = None   # s_I
    steps: int = 100
    seed: int = 0
    resolution: int | None = None     # long side of the edit; None = the model's native size
    scheduler: str = DEFAULT_SCHEDULER
    batch_size: int = 8               # images per UNet batch (x3 inside for the guidance)

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if any(s is not None and s < 0 for s in (self.text_guidance, self.image_guidance)):
            raise ValueError(f"guidance scales must be >= 0, got text {self.text_guidance}, "
                             f"image {self.image_guidance}")
        if self.resolution is not None and self.resolution < 1:
            raise ValueError(f"resolution must be positive, got {self.resolution}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be in [0, 2**63), got {self.seed}")

    def for_editor(self, editor=None) -> "EditSettings":
        """These settings with every scale left None taken from ``editor``'s edit_config.json, else
        from the paper."""
        own = {**PAPER_GUIDANCE, **(getattr(editor, "edit_defaults", None) or {})}
        return replace(self, **{k: own[k] for k in PAPER_GUIDANCE if getattr(self, k) is None})


def dual_guidance(e_text_img: torch.Tensor, e_img: torch.Tensor, e_none: torch.Tensor,
                  text_scale: float, image_scale: float) -> torch.Tensor:
    """InstructPix2Pix's guided prediction from its three conditional predictions."""
    return e_none + text_scale * (e_text_img - e_img) + image_scale * (e_img - e_none)


@torch.inference_mode()
def sample_edits(editor: Editor, pixels: torch.Tensor, instructions: Sequence[str], settings: EditSettings,
                 seeds: Sequence[int], progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Edit a batch of images in [-1, 1] (B, 3, H, W); returns decoded images in [-1, 1]."""
    from diffusers.utils.torch_utils import randn_tensor

    batch = pixels.shape[0]
    if not len(instructions) == len(seeds) == batch:
        raise ValueError(f"{batch} images, {len(instructions)} instructions, {len(seeds)} seeds: must match")
    device, dtype = editor.device, editor.dtype
    # One generator per image: an image's edit depends on its seed only, not on its batch mates.
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]

    text = editor.encode_instructions(list(instructions))
    null = editor.null_text_embedding().expand(batch, -1, -1)
    text_embeds = torch.cat([text, null, null])

    pixels = pixels.to(device=device, dtype=dtype)
    image_latents = editor.vae.encode(pixels).latent_dist.mode()   # unscaled, as trained
    image_latents = torch.cat([image_latents, image_latents, torch.zeros_like(image_latents)])

    scheduler = make_scheduler(settings.scheduler, editor.scheduler_config)
    scheduler.set_timesteps(settings.steps, device=device)
    step_args = step_kwargs(scheduler, generators)
    shape = (batch, editor.vae.config.latent_channels, *image_latents.shape[-2:])
    latents = randn_tensor(shape, generator=generators, device=device, dtype=dtype) * scheduler.init_noise_sigma

    timesteps = scheduler.timesteps
    for i, t in enumerate(timesteps):
        scaled = scheduler.scale_model_input(latents, t).repeat(3, 1, 1, 1)
        unet_input = torch.cat([scaled, image_latents], dim=1)
        noise = editor.unet(unet_input, t, encoder_hidden_states=text_embeds, return_dict=False)[0]
        noise = dual_guidance(*noise.chunk(3), settings.text_guidance, settings.image_guidance)
        latents = scheduler.step(noise, t, latents, **step_args, return_dict=False)[0]
        if progress is not None:
            progress(i + 1, len(timesteps))

    return editor.vae.decode(latents / editor.vae.config.scaling_factor, return_dict=False)[0]


def edit_images(editor, images: Sequence[Image.Image], instructions: str | Sequence[str],
                settings: EditSettings | None = None, seeds: Sequence[int] | None = None,
                progress: Callable[[int, int], None] | None = None) -> list[Image.Image]:
    """Edit each image by its instruction; each result has its input's size.

    ``editor``: an Editor (model.editor.loading) or an in-memory InstructPix2Pix pipeline.
    ``instructions``: one for all images, or one per image. ``seeds``: one per image (variations
    of one image are the same image with different seeds); default ``settings.seed`` for all.
    Images are edited at the original's size (long side = resolution, sides multiples of 64
    for SD), grouped by that size into batches, and resized back.
    """
    from diffusers.image_processor import VaeImageProcessor

    editor = as_editor(editor)
    settings = (settings or EditSettings()).for_editor(editor)
    images = list(images)
    instructions = [instructions] * len(images) if isinstance(instructions, str) else list(instructions)
    seeds = [settings.seed] * len(images) if seeds is None else [int(s) for s in seeds]
    if not len(instructions) == len(seeds) == len(images):
        raise ValueError(f"{len(images)} images, {len(instructions)} instructions, {len(seeds)} seeds: must match")
    resolution = settings.resolution or editor.native_resolution
    processor = VaeImageProcessor(vae_scale_factor=editor.vae_scale_factor, do_resize=False)

    upright = [to_rgb(im) for im in images]
    prepared = [fit_for_edit(im, resolution, editor.size_multiple) for im in upright]
    by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, im in enumerate(prepared):
        by_size[im.size].append(i)
    chunks = [idx[k : k + settings.batch_size] for idx in by_size.values()
              for k in range(0, len(idx), settings.batch_size)]

    results: list[Image.Image | None] = [None] * len(images)
    done_steps, total_steps = 0, len(chunks) * settings.steps
    for chunk in chunks:
        pixels = processor.preprocess([prepared[i] for i in chunk])
        report = None
        if progress is not None:
            report = lambda k, n, base=done_steps: progress(base + k, total_steps)  # noqa: E731
        decoded = sample_edits(editor, pixels, [instructions[i] for i in chunk], settings,
                               [seeds[i] for i in chunk], progress=report)
        done_steps += settings.steps
        for i, out in zip(chunk, processor.postprocess(decoded.float().cpu(), output_type="pil")):
            size = upright[i].size
            results[i] = out if out.size == size else out.resize(size, Image.Resampling.LANCZOS)
    return results


def edit_batch(editor, images: Sequence[Image.Image], instructions: Sequence[str], steps: int,
               text_guidance: float, image_guidance: float, seed: int, batch_size: int = 8,
               seeds: Sequence[int] | None = None, scheduler: str = DEFAULT_SCHEDULER) -> list[Image.Image]:
    """Edit images at explicit settings, each image with its own seed (default: derived from ``seed``
    and its index), as evaluation and training's sample grids do."""
    seeds = list(seeds) if seeds is not None else [seed_from(seed, i) for i in range(len(images))]
    settings = EditSettings(text_guidance=text_guidance, image_guidance=image_guidance, steps=steps,
                            seed=seed, batch_size=batch_size, scheduler=scheduler)
    return edit_images(editor, list(images), list(instructions), settings, seeds=seeds)
