"""The candidate renderer: a chunk of CandidateSpecs of some triples -> Candidates with image bytes.

Triples whose captions the text encoder cannot tell apart are not rendered (caption_guard.py):
their candidates fail with the reason. Encodes the chunk's captions once (truncated to the text
encoder's window), aligns each
triple's captions (cross mode), runs the batched two-branch sampler (sampler.py), decodes each
distinct final latent once, and writes PNG (lossless) or quality-100 JPEG bytes.
"""
from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from PIL import Image

from datagen.config import RenderConfig
from datagen.preview_rule import FEATURES, PreviewRule
from datagen.records import Candidate, CandidateSpec, Scores, Triple

from .alignment import align_captions, caption_tokens
from .attention import P2P_SELF_MAX_TOKENS, attention_steps, install
from .caption_guard import why_not_render
from .loading import LoadedPipeline
from .sampler import CandidatePlan, SampleResult, SharingRules, TextTable, sample


# A scorer of image pairs with the filter's CLIP metrics (the filter's ClipScorer.score), handed in
# by whoever composes the stages: Stage 2 imports no other stage.
PreviewScorer = Callable[[list[Candidate], list[tuple[Image.Image, Image.Image]]], list[Scores]]


@dataclass
class RenderedCandidate:
    candidate: Candidate
    images: dict[str, bytes] = field(default_factory=dict)   # "input.png" / "edited.png"; empty if failed
    preview_images: dict[str, bytes] = field(default_factory=dict)   # "preview_input.png", ...; if previewed


@dataclass
class RenderCounters:
    """What a chunk cost; summed over a shard into its stats."""

    candidates: int = 0
    failed: int = 0
    unet_calls: int = 0
    unet_rows: int = 0
    unet_rows_unshared: int = 0    # what one-candidate-at-a-time rendering would have run
    previewed: int = 0             # candidates whose preview was scored (render.preview)
    stopped: int = 0               # ... and stopped by the preview rule
    unet_rows_saved_preview: int = 0   # rows the stopped lanes would have run to the last step
    seconds_preview: float = 0.0   # decoding and scoring previews
    skipped: int = 0               # candidates never started: their triple was enough or hopeless (render.waves)
    unet_rows_saved_waves: int = 0     # what the skipped candidates would have cost, rendered one at a time
    seconds_text: float = 0.0
    seconds_sampling: float = 0.0
    seconds_unet: float = 0.0
    seconds_decode: float = 0.0
    seconds_images: float = 0.0

    def add(self, other: "RenderCounters") -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


def sharing_rules(mode: str) -> SharingRules:
    if mode == "cross":
        return SharingRules(uncond_shares=False, self_max_tokens=P2P_SELF_MAX_TOKENS)
    return SharingRules(uncond_shares=True, self_max_tokens=None)


def encode_image(pixels: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(pixels)
    if fmt == "png":
        img.save(buf, format="PNG")
    else:
        img.save(buf, format="JPEG", quality=100, subsampling=0)
    return buf.getvalue()


class CandidateRenderer:
    """Renders candidates with one loaded pipeline (attention processors installed once)."""

    decode_batch = 8

    def __init__(self, loaded: LoadedPipeline, cfg: RenderConfig, preview_scorer: PreviewScorer | None = None,
                 preview_rule: PreviewRule | None = None):
        if cfg.preview is not None and preview_scorer is None:
            raise ValueError("render.preview is set but no CLIP scorer was given to score the previews with")
        self.loaded, self.cfg = loaded, cfg
        self.preview_scorer, self.preview_rule = preview_scorer, preview_rule
        pipe = loaded.pipe
        self.unet, self.vae, self.tokenizer, self.text_encoder = pipe.unet, pipe.vae, pipe.tokenizer, pipe.text_encoder
        self.control = install(self.unet)
        self.rules = sharing_rules(cfg.mode)
        factor = pipe.vae_scale_factor
        self.height = cfg.height or self.unet.config.sample_size * factor
        self.width = cfg.width or self.unet.config.sample_size * factor
        down = 2 ** (len(self.unet.config.down_block_types) - 1)
        if self.height % (factor * down) or self.width % (factor * down):
            raise ValueError(
                f"render size {self.height}x{self.width} must be a multiple of {factor * down} for this model")
        self.latent_shape = (self.unet.config.in_channels, self.height // factor, self.width // factor)
        self.preview_decoder = load_preview_decoder(cfg.preview.decoder, self.vae) if cfg.preview else None
        if preview_rule is not None:
            preview_rule.check_matches(cfg.preview.fraction, cfg.steps)

    # --- text -----------------------------------------------------------------------------
    def is_truncated(self, caption: str) -> bool:
        return caption_tokens(self.tokenizer, caption)[1]

    @torch.no_grad()
    def encode_captions(self, captions: list[str]) -> torch.Tensor:
        """(len, S, D) encodings as Stable Diffusion's pipeline makes them, truncated to the window."""
        ids = self.tokenizer(captions, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = ids.attention_mask.to(self.loaded.device)
        out = self.text_encoder(ids.input_ids.to(self.loaded.device), attention_mask=mask)[0]
        return out.to(self.unet.dtype)

    # --- sampling ---------------------------------------------------------------------------
    def sample_chunk(self, triples: dict[str, Triple], specs: list[CandidateSpec],
                     counters: RenderCounters | None = None, on_preview=None) -> SampleResult:
        """Final latents of a chunk (no decoding): the part the reference is checked against."""
        counters = counters if counters is not None else RenderCounters()
        cfg = self.cfg
        t0 = time.perf_counter()
        captions = [""]
        text_row: dict[str, int] = {"": 0}
        align_row: dict[str, int] = {}
        value_maps, own_scales = [], []
        for spec in specs:
            if spec.mode != cfg.mode:
                raise ValueError(f"candidate {spec.candidate_id} has mode {spec.mode!r}; "
                                 f"this renderer renders {cfg.mode!r}")
            t = triples[spec.triple_id]
            for c in (t.input_caption, t.output_caption):
                if c not in text_row:
                    text_row[c] = len(captions)
                    captions.append(c)
            if spec.mode == "cross" and spec.triple_id not in align_row:
                al = align_captions(self.tokenizer, t.input_caption, t.output_caption)
                e = al.reweight(cfg.cross_reweight)
                align_row[spec.triple_id] = len(value_maps)
                value_maps.append(al.mapper * e[None, :])
                own_scales.append((1 - al.alphas) * e)
        dev = self.loaded.device
        text = TextTable(self.encode_captions(captions),
                         torch.stack(value_maps).to(dev) if value_maps else None,
                         torch.stack(own_scales).to(dev) if own_scales else None)
        counters.seconds_text += time.perf_counter() - t0

        scheduler = type(self.loaded.pipe.scheduler).from_config(self.loaded.pipe.scheduler.config)
        scheduler.set_timesteps(cfg.steps)
        evaluations = len(scheduler.timesteps)   # = steps, except for multi-evaluation samplers (Heun)
        plans = []
        for spec in specs:
            t = triples[spec.triple_id]
            self_steps, cross_steps = attention_steps(spec.mode, spec.p, evaluations, cfg.self_replace_fraction,
                                                      cfg.cross_replace_fraction)
            plans.append(CandidatePlan(seed=spec.seed, cfg_scale=spec.cfg_scale, source_text=text_row[t.input_caption],
                                       edited_text=text_row[t.output_caption], self_steps=self_steps,
                                       cross_steps=cross_steps, alignment=align_row.get(spec.triple_id, -1)))
        t0 = time.perf_counter()
        preview_step = max(1, round(cfg.preview.fraction * evaluations)) if cfg.preview and on_preview else 0
        result = sample(self.unet, scheduler, self.control, plans, text, self.rules, cfg.steps, self.latent_shape,
                        preview_step, on_preview)
        counters.seconds_sampling += time.perf_counter() - t0
        counters.unet_rows_saved_preview += result.unet_rows_saved_preview
        counters.seconds_unet += result.unet_seconds
        counters.unet_calls += result.unet_calls
        counters.unet_rows += result.unet_rows
        counters.unet_rows_unshared += 4 * evaluations * len(specs)
        return result

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, vae=None) -> np.ndarray:
        """(n, H, W, 3) uint8 images; NaN pixels become 0 (callers check ``decode_finite``)."""
        vae = vae or self.vae
        out = []
        for i in range(0, len(latents), self.decode_batch):
            z = latents[i:i + self.decode_batch] / vae.config.scaling_factor
            if getattr(vae.config, "shift_factor", None):
                z = z + vae.config.shift_factor
            x = vae.decode(z.to(vae.dtype)).sample.float()
            out.append(x)
        x = torch.cat(out)
        self.decode_finite = torch.isfinite(x).flatten(1).all(dim=1).cpu()
        x = torch.nan_to_num((x / 2 + 0.5).clamp(0, 1), nan=0.0)
        return (x.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)

    def render_chunk(self, triples: dict[str, Triple], specs: list[CandidateSpec],
                     counters: RenderCounters | None = None) -> list[RenderedCandidate]:
        counters = counters if counters is not None else RenderCounters()
        # Decided inside the chunk, so that render-one (which renders the chunk again) drops the same specs.
        not_rendered = {tid: why_not_render(self.tokenizer, triples[tid].input_caption, triples[tid].output_caption)
                        for tid in {s.triple_id for s in specs}}
        order = {spec.candidate_id: i for i, spec in enumerate(specs)}
        skipped = [spec for spec in specs if not_rendered[spec.triple_id]]
        to_render = [spec for spec in specs if not not_rendered[spec.triple_id]]
        rendered = self._render_specs(triples, to_render, counters) if to_render else []
        for spec in skipped:
            cand = self._candidate(spec, triples[spec.triple_id])
            cand.status, cand.failure_reason = "failed", not_rendered[spec.triple_id]
            rendered.append(RenderedCandidate(cand))
        counters.candidates += len(skipped)
        counters.failed += len(skipped)
        return sorted(rendered, key=lambda r: order[r.candidate.candidate_id])

    def _candidate(self, spec: CandidateSpec, t: Triple) -> Candidate:
        return Candidate(
            candidate_id=spec.candidate_id, triple_id=spec.triple_id, index=spec.index, seed=spec.seed,
            p=spec.p, cfg_scale=spec.cfg_scale, mode=spec.mode, steps=self.cfg.steps,
            model_id=self.loaded.model_id, input_caption=t.input_caption, instruction=t.instruction,
            output_caption=t.output_caption, edit_kind=t.edit_kind, image_format=self.cfg.image_format)

    def _render_specs(self, triples: dict[str, Triple], specs: list[CandidateSpec],
                      counters: RenderCounters) -> list[RenderedCandidate]:
        previews: dict[int, tuple[Scores, bytes, bytes]] = {}
        on_preview = None
        if self.cfg.preview is not None:
            def on_preview(x0_src, x0_edit, live):
                return self._preview(triples, specs, x0_src, x0_edit, live, previews, counters)
        result = self.sample_chunk(triples, specs, counters, on_preview)
        failures = dict(result.failures)

        t0 = time.perf_counter()
        # Decode each distinct final latent once: sources, then the edited rows' representatives.
        twins = sorted({result.edited_twin[c] for c in range(len(specs)) if c not in failures and c not in result.stopped})
        pixels = self.decode(torch.cat([result.source_latents, result.edited_latents[twins]]))
        finite = self.decode_finite
        n_src = len(result.source_latents)
        twin_pos = {c: n_src + j for j, c in enumerate(twins)}
        counters.seconds_decode += time.perf_counter() - t0

        t0 = time.perf_counter()
        fmt = self.cfg.image_format
        rendered = []
        for c, spec in enumerate(specs):
            src, edit = result.source_of[c], twin_pos.get(result.edited_twin[c])
            if c not in failures and c not in result.stopped and not (finite[src] and finite[edit]):
                failures[c] = "non-finite pixels after VAE decoding"
            cand = self._candidate(spec, triples[spec.triple_id])
            images, preview_images = {}, {}
            if c in previews:
                sc, b_in, b_out = previews[c]
                cand.preview_sim_0, cand.preview_sim_1 = sc.sim_0, sc.sim_1
                cand.preview_sim_image, cand.preview_sim_direction = sc.sim_image, sc.sim_direction
                preview_images = {"preview_input.png": b_in, "preview_edited.png": b_out}
            if c in result.stopped:
                cand.status, cand.failure_reason = "stopped", result.stopped[c]
            elif c in failures:
                cand.status, cand.failure_reason = "failed", failures[c]
            else:
                images = {f"input.{fmt}": encode_image(pixels[src], fmt),
                          f"edited.{fmt}": encode_image(pixels[edit], fmt)}
            rendered.append(RenderedCandidate(cand, images, preview_images))
        counters.seconds_images += time.perf_counter() - t0
        counters.candidates += len(specs)
        counters.failed += len(failures)
        counters.stopped += len(result.stopped)
        return rendered

    def _preview(self, triples: dict[str, Triple], specs: list[CandidateSpec], x0_src: torch.Tensor,
                 x0_edit: torch.Tensor, live: list[int], previews: dict, counters: RenderCounters) -> dict[int, str]:
        """Decode and score the live candidates' x0 predictions (recorded in ``previews``); the
        candidates the rule stops, with the reason."""
        t0 = time.perf_counter()
        # The chunk's source rows are decoded whole: which of them a candidate uses is the sampler's business.
        pixels = self.decode(torch.cat([x0_src, x0_edit[live]]), self.preview_decoder)
        n_src = len(x0_src)
        source_of = self._source_rows(specs, triples)
        pairs = [(Image.fromarray(pixels[source_of[c]]), Image.fromarray(pixels[n_src + j])) for j, c in enumerate(live)]
        cands = [self._candidate(specs[c], triples[specs[c].triple_id]) for c in live]
        scores = self.preview_scorer(cands, pairs)
        for j, c in enumerate(live):
            previews[c] = (scores[j], encode_image(pixels[source_of[c]], "png"), encode_image(pixels[n_src + j], "png"))
        stop = {}
        if self.preview_rule is not None:
            x = np.array([[getattr(sc, name) for name in FEATURES] for sc in scores])
            keep = self.preview_rule.keep(x)
            stop = {c: f"stopped_by_preview: at {self.cfg.preview.fraction:g} of the steps" for c, k in zip(live, keep)
                    if not k}
        counters.previewed += len(live)
        counters.seconds_preview += time.perf_counter() - t0
        return stop

    def _source_rows(self, specs: list[CandidateSpec], triples: dict[str, Triple]) -> list[int]:
        """Candidate -> its source row, numbered as sampler.sample numbers them (first appearance
        of (input caption, seed, cfg))."""
        rows: dict[tuple, int] = {}
        return [rows.setdefault((triples[s.triple_id].input_caption, s.seed, s.cfg_scale), len(rows)) for s in specs]


def load_preview_decoder(decoder: str, vae):
    """The VAE that decodes previews: the pipeline's own, or a tiny one (diffusers' AutoencoderTiny,
    e.g. madebyollin/taesd for SD 1.x), put on the VAE's device and dtype."""
    if decoder == "vae":
        return vae
    from diffusers import AutoencoderTiny

    try:
        tiny = AutoencoderTiny.from_pretrained(decoder)
    except (OSError, ValueError) as e:
        raise ValueError(f"render.preview.decoder {decoder!r}: not an AutoencoderTiny directory or hub id: {e}") from e
    if tiny.config.latent_channels != vae.config.latent_channels:
        raise ValueError(f"render.preview.decoder {decoder!r} decodes {tiny.config.latent_channels}-channel latents; "
                         f"this pipeline's are {vae.config.latent_channels}-channel")
    return tiny.to(vae.device, vae.dtype).eval().requires_grad_(False)
