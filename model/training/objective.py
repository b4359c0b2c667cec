"""The InstructPix2Pix editor set-up and its training objective, as pure functions.

The editor is a Stable Diffusion whose UNet reads 8 input channels: the 4 of the noisy
target latent and the 4 of the input image's latent. Everything here follows InstructPix2Pix's
paper and training code: conv_in widened with the new weights zero (so the untrained editor IS the base
model), image condition = VAE posterior mode NOT scaled, target latent scaled, conditioning
dropout 5/5/5 % with null text = the encoding of "" and null image = zeros.

Randomness of a training sample (VAE posterior sample, noise, timestep, dropout draw) is a
function of its occurrence seed only, so the same sample gets the same draws whatever the
number of processes, the batch split or a resume in between.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from datagen.shapes.models import resolve_model
from model.editor.loading import EditorLoadError

log = logging.getLogger(__name__)

EDITOR_IN_CHANNELS = 8


@dataclass
class EditorParts:
    """The modules of an editor under training and what is needed to save it as a pipeline."""

    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    unet: torch.nn.Module
    noise_scheduler: object          # DDPMScheduler: the training schedule of the base model
    scheduler_config: dict           # the base's sampling scheduler config, reused for the editor
    source: str                      # the resolved base model id / directory


def resolve_base(name: str) -> str:
    """``shapes`` -> the shipped tiny SD; hub ids and directories pass through."""
    return resolve_model(name, "t2i")


def load_parts(base_model: str, in_channels: int = EDITOR_IN_CHANNELS) -> EditorParts:
    """Load a Stable Diffusion (or an existing editor) and widen its UNet for editing."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    source = resolve_base(base_model)
    try:
        # float32 master weights whatever the checkpoint holds (ours ship fp16; transformers would
        # otherwise keep the text encoder in fp16); training casts the frozen parts as configured.
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=torch.float32)
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=torch.float32)
        text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", torch_dtype=torch.float32)
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")
        noise_scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler")
    except (OSError, ValueError) as e:
        raise EditorLoadError(
            f"cannot load {base_model!r} ({source}) as a Stable Diffusion pipeline with unet/, vae/, "
            f"text_encoder/, tokenizer/ and scheduler/: {e}") from e
    unet = widen_conv_in(unet, in_channels)
    return EditorParts(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                       noise_scheduler=noise_scheduler, scheduler_config=dict(noise_scheduler.config),
                       source=source)


def widen_conv_in(unet, in_channels: int = EDITOR_IN_CHANNELS):
    """Give ``unet.conv_in`` ``in_channels`` inputs: old weights copied, new ones zero.

    A UNet that already has ``in_channels`` (an existing editor being retrained) is returned
    as it is. With a zero image latent the widened UNet computes exactly what the base did.
    """
    old = unet.conv_in
    if old.in_channels == in_channels:
        return unet
    if old.in_channels > in_channels:
        raise ValueError(f"UNet conv_in has {old.in_channels} input channels, more than {in_channels}")
    new = torch.nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                          device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels].copy_(old.weight)
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)
    return unet


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    module.requires_grad_(False)
    return module.eval()


# ---------------------------------------------------------------------------------------
# Text and image conditioning
# ---------------------------------------------------------------------------------------
def dropout_masks(u: torch.Tensor, p_text: float, p_image: float, p_both: float):
    """(drop_text, drop_image) per sample from one uniform draw ``u`` per sample.

    u in [0, p_text): text only; [p_text, p_text + p_both): both; next p_image: image only —
    the layout of the original training script, so 5/5/5 % drops text in 10 % of samples.
    """
    drop_text = u < p_text + p_both
    drop_image = (u >= p_text) & (u < p_text + p_both + p_image)
    return drop_text, drop_image


@dataclass
class SampleDraws:
    """The random draws of a batch, one row per sample, made from per-sample seeds."""

    u: torch.Tensor            # (B,) dropout draw
    timesteps: torch.Tensor    # (B,) long
    noise: torch.Tensor        # (B, C, h, w) diffusion noise
    posterior_eps: torch.Tensor  # (B, C, h, w) for the VAE posterior sample of the target


TIMESTEP_SAMPLING = ("uniform", "cubic")


def draw_timestep(g: torch.Generator, num_train_timesteps: int, sampling: str = "uniform") -> torch.Tensor:
    """One training timestep. ``uniform`` is the paper's; ``cubic`` (T2I-Adapter, Mou et al. 2023)
    draws t = (1 - u^3) T: 58 % of draws fall in the noisiest fifth of the schedule, where
    sampling lays out the scene and where the image condition is all the model has to copy from."""
    if sampling == "uniform":
        return torch.randint(0, num_train_timesteps, (), generator=g)
    if sampling == "cubic":
        u = torch.rand((), generator=g, dtype=torch.float64)
        return ((1 - u ** 3) * num_train_timesteps).long().clamp(max=num_train_timesteps - 1)
    raise ValueError(f"unknown timestep sampling {sampling!r}: expected one of {TIMESTEP_SAMPLING}")


def draw_samples(seeds: list[int], latent_shape: tuple[int, int, int], num_train_timesteps: int,
                 timestep_sampling: str = "uniform") -> SampleDraws:
    us, ts, noises, epss = [], [], [], []
    for s in seeds:
        g = torch.Generator().manual_seed(int(s))
        us.append(torch.rand((), generator=g))
        ts.append(draw_timestep(g, num_train_timesteps, timestep_sampling))
        noises.append(torch.randn(latent_shape, generator=g))
        epss.append(torch.randn(latent_shape, generator=g))
    return SampleDraws(torch.stack(us), torch.stack(ts).long(), torch.stack(noises), torch.stack(epss))


def latent_shape(vae, resolution: int) -> tuple[int, int, int]:
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    return (vae.config.latent_channels, resolution // factor, resolution // factor)


def scale_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


@dataclass
class LossInputs:
    """One micro-batch, ready for the loss: pixels in [-1, 1] and token ids."""

    original: torch.Tensor     # (B, 3, H, W) the input image
    edited: torch.Tensor       # (B, 3, H, W) the target image
    input_ids: torch.Tensor    # (B, L) the instruction tokens
    seeds: list[int]           # one per sample: the key of its random draws


# On CPU one VAE pass over 64 images of 64 px ran at half the speed of two passes of 32 (its
# activations outgrow the cache; bench/train.py); a GPU takes the whole batch in one pass.
CPU_VAE_PASS = 32


def encode_posterior(vae, pixels: torch.Tensor, max_pass: int | None = None):
    """The VAE's posterior of ``pixels``, encoded in passes of at most ``max_pass`` images."""
    if max_pass is None or len(pixels) <= max_pass:
        return vae.encode(pixels).latent_dist
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    return DiagonalGaussianDistribution(torch.cat([vae.encode(part).latent_dist.parameters
                                                   for part in pixels.split(max_pass)]))


def editor_loss(unet, vae, text_encoder, noise_scheduler, null_text: torch.Tensor, batch: LossInputs,
                p_text: float, p_image: float, p_both: float, weight_dtype=torch.float32,
                snr_gamma: float | None = None, timestep_sampling: str = "uniform") -> torch.Tensor:
    """The InstructPix2Pix training loss of one micro-batch (mean over the batch).

    ``snr_gamma``: Min-SNR weighting (Hang et al. 2023, diffusers' ``--snr_gamma``); None is the
    paper's plain MSE. ``timestep_sampling``: see ``draw_timestep``."""
    device = null_text.device
    bsz = batch.original.shape[0]
    with torch.no_grad():
        # One VAE pass for both images: the target needs a posterior sample, the condition its mode.
        pixels = torch.cat([batch.edited, batch.original]).to(device, weight_dtype)
        posterior = encode_posterior(vae, pixels, CPU_VAE_PASS if pixels.device.type == "cpu" else None)
        draws = draw_samples(batch.seeds, tuple(posterior.mean.shape[1:]),
                             noise_scheduler.config.num_train_timesteps, timestep_sampling)
        mean, std = posterior.mean, posterior.std
        target_latents = scale_latents(vae, mean[:bsz] + std[:bsz] * draws.posterior_eps.to(device, mean.dtype))
        image_cond = posterior.mode()[bsz:]          # unscaled, as InstructPix2Pix's training code does

        text = text_encoder(batch.input_ids.to(device))[0]
        drop_text, drop_image = dropout_masks(draws.u, p_text, p_image, p_both)
        text = torch.where(drop_text.to(device)[:, None, None], null_text.to(text.dtype), text)
        image_cond = image_cond * (~drop_image).to(device, image_cond.dtype)[:, None, None, None]

        noise = draws.noise.to(device, target_latents.dtype)
        timesteps = draws.timesteps.to(device)
        noisy = noise_scheduler.add_noise(target_latents, noise, timesteps)
        prediction_type = noise_scheduler.config.prediction_type
        if prediction_type == "epsilon":
            target = noise
        elif prediction_type == "v_prediction":
            target = noise_scheduler.get_velocity(target_latents, noise, timesteps)
        else:
            raise ValueError(f"unsupported prediction type {prediction_type!r}")
        model_input = torch.cat([noisy, image_cond], dim=1)
    pred = unet(model_input, timesteps, text).sample
    if snr_gamma is None:
        return F.mse_loss(pred.float(), target.float(), reduction="mean")
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, timesteps).float()
    weight = snr.clamp(max=snr_gamma) / (snr + 1 if prediction_type == "v_prediction" else snr)
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * weight).mean()


# ---------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------
def build_pipeline(parts: EditorParts, unet=None):
    """A diffusers StableDiffusionInstructPix2PixPipeline of the parts (Euler ancestral sampler)."""
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
        unet=unet if unet is not None else parts.unet,
        scheduler=EulerAncestralDiscreteScheduler.from_config(parts.scheduler_config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_pipeline(parts: EditorParts, out_dir: str | Path, unet=None) -> Path:
    out_dir = Path(out_dir)
    build_pipeline(parts, unet).save_pretrained(out_dir, safe_serialization=True)
    return out_dir
