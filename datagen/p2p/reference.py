"""THE SLOW REFERENCE: Prompt-to-Prompt rendered the naive way, one candidate at a time.

Not for production. It exists so that the fast renderer (attention.py, sampler.py, render.py)
can be checked against a plain, readable implementation (tests/p2p) and timed against it
(bench/p2p.py). It does what the original code does:
- one candidate per sampling loop; the UNet batch holds the 4 rows of InstructPix2Pix's
  generator: (source, edited) x (unconditional, conditional);
- every attention layer materialises its probabilities ``softmax(Q K^T * scale)`` and edits
  them in place: ``self`` copies the source rows' self-attention maps onto the edited rows;
  ``cross`` builds the edited caption's cross-attention map from the source's with P2P's
  formulas (swap: ``P_src @ mapper``; refine: gather ``P_src[..., index]`` blended by
  ``alphas``; re-weighting multiplies target columns), and copies the conditional self maps at
  low resolution;
- both branches start from the same noise and get the same ancestral noise (one CPU
  generator per branch, seeded alike).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from datagen.schedulers import step_kwargs

from .alignment import TokenAlignment
from .attention import P2P_SELF_MAX_TOKENS, attention_steps, finish, project

# Batch layout of the original generator: CFGDenoiser's cat([uncond, cond]) of the 2 prompts.
SRC_UNCOND, EDIT_UNCOND, SRC_COND, EDIT_COND = 0, 1, 2, 3


@dataclass
class ReferencePlan:
    mode: str
    self_on: bool = False
    cross_on: bool = False
    alignment: TokenAlignment | None = None
    reweight: torch.Tensor | None = None      # (S,) per target token


class ReferenceAttnProcessor:
    """Explicit attention probabilities, edited as the original code edits them."""

    def __init__(self) -> None:
        self.plan: ReferencePlan | None = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        if attention_mask is not None:
            raise NotImplementedError("the reference has no attention masks (Stable Diffusion uses none)")
        is_self = encoder_hidden_states is None
        q, k, v, saved = project(attn, hidden_states, encoder_hidden_states, temb)
        probs = (torch.matmul(q.float(), k.float().transpose(-1, -2)) * attn.scale).softmax(dim=-1)
        plan = self.plan
        if plan is not None and plan.mode == "self" and is_self and plan.self_on:
            probs[EDIT_UNCOND] = probs[SRC_UNCOND]
            probs[EDIT_COND] = probs[SRC_COND]
        elif plan is not None and plan.mode == "cross":
            if is_self and plan.self_on and q.shape[2] <= P2P_SELF_MAX_TOKENS:
                probs[EDIT_COND] = probs[SRC_COND]
            elif not is_self and plan.cross_on:
                probs[EDIT_COND] = self._edit_cross(probs[SRC_COND], probs[EDIT_COND], plan)
        out = torch.matmul(probs, v.float())
        return finish(attn, out, saved, q.dtype)

    @staticmethod
    def _edit_cross(base: torch.Tensor, own: torch.Tensor, plan: ReferencePlan) -> torch.Tensor:
        """P2P's AttentionReplace / AttentionRefine (+ AttentionReweight) on (heads, queries, tokens) maps."""
        al = plan.alignment
        if al.kind == "swap":
            new = torch.einsum("hqw,wn->hqn", base, al.mapper) + own * (1 - al.alphas)
        else:
            new = base[:, :, al.index] * al.alphas + own * (1 - al.alphas)
        if plan.reweight is not None:
            new = new * plan.reweight
        return new


@torch.no_grad()
def sample_reference(unet, scheduler, processor: ReferenceAttnProcessor, *, uncond: torch.Tensor,
                     source_text: torch.Tensor, edited_text: torch.Tensor, seed: int, cfg_scale: float, p: float,
                     mode: str, steps: int, latent_shape: tuple[int, int, int], self_replace_fraction: float,
                     cross_replace_fraction: float, alignment: TokenAlignment | None = None,
                     reweight: torch.Tensor | None = None) -> torch.Tensor:
    """Final latents (2, C, h, w) = (source, edited) of one candidate, float32.

    ``processor`` must be on ``unet``; ``uncond``, ``source_text``, ``edited_text`` are (S, D)
    text encodings; ``alignment``/``reweight`` are on the UNet's device (cross mode).
    """
    device, dtype = unet.device, unet.dtype
    generators = [torch.Generator("cpu").manual_seed(seed) for _ in range(2)]
    scheduler.set_timesteps(steps, device=device)
    self_steps, cross_steps = attention_steps(mode, p, len(scheduler.timesteps), self_replace_fraction,
                                              cross_replace_fraction)
    latents = torch.cat([torch.randn((1, *latent_shape), generator=g) for g in generators]).to(device)
    latents = latents * scheduler.init_noise_sigma
    context = torch.stack([uncond, uncond, source_text, edited_text]).to(device, dtype)
    for i, t in enumerate(scheduler.timesteps):
        processor.plan = ReferencePlan(mode, self_on=i < self_steps, cross_on=i < cross_steps,
                                       alignment=alignment, reweight=reweight)
        x = scheduler.scale_model_input(torch.cat([latents, latents]), t)
        eps = unet(x.to(dtype), t, encoder_hidden_states=context).sample.float()
        processor.plan = None
        uncond_eps, cond_eps = eps.chunk(2)
        guided = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
        latents = scheduler.step(guided, t, latents, **step_kwargs(scheduler, generators)).prev_sample
    return latents


def reference_candidate(pipe, cfg, triple, spec, latent_shape: tuple[int, int, int]) -> torch.Tensor:
    """(source, edited) final latents of one candidate rendered the slow way, with the pipeline's
    own ``encode_prompt`` and a fresh scheduler; the UNet's processors are restored afterwards.

    ``cfg`` is the RenderConfig, ``triple`` a Triple, ``spec`` its CandidateSpec.
    """
    from .alignment import align_captions

    device = pipe.unet.device
    saved = pipe.unet.attn_processors
    processor = ReferenceAttnProcessor()
    pipe.unet.set_attn_processor(processor)
    try:
        with torch.no_grad():
            source, uncond = pipe.encode_prompt(triple.input_caption, device, 1, True)
            edited, _ = pipe.encode_prompt(triple.output_caption, device, 1, True)
        alignment = reweight = None
        if spec.mode == "cross":
            alignment = align_captions(pipe.tokenizer, triple.input_caption, triple.output_caption)
            reweight = alignment.reweight(cfg.cross_reweight).to(device)
            alignment = TokenAlignment(alignment.kind, alignment.mapper.to(device), alignment.index.to(device),
                                       alignment.alphas.to(device), alignment.changed.to(device))
        scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
        return sample_reference(
            pipe.unet, scheduler, processor, uncond=uncond[0], source_text=source[0], edited_text=edited[0],
            seed=spec.seed, cfg_scale=spec.cfg_scale, p=spec.p, mode=spec.mode, steps=cfg.steps,
            latent_shape=latent_shape, self_replace_fraction=cfg.self_replace_fraction,
            cross_replace_fraction=cfg.cross_replace_fraction, alignment=alignment, reweight=reweight)
    finally:
        pipe.unet.set_attn_processor(saved)


@torch.no_grad()
def decode_reference(pipe, latents: torch.Tensor) -> torch.Tensor:
    """Decode (source, edited) latents to images in [0, 1], (2, 3, H, W)."""
    vae = pipe.vae
    x = vae.decode((latents / vae.config.scaling_factor).to(vae.dtype)).sample.float()
    return (x / 2 + 0.5).clamp(0, 1)
