"""The fast renderer (batched, shared rows, fused attention) against the naive reference.

float32 on CPU: the max abs difference of every final latent must stay within 1e-4, for every
attention mode, with two triples and groups of candidates that share a seed in one chunk.
"""
from __future__ import annotations

import pytest
import torch

from datagen.p2p.reference import reference_candidate
from datagen.p2p.render import CandidateRenderer
from datagen.p2p.specs import shard_specs
from datagen.schedulers import make_scheduler

from .conftest import make_triple, render_config

TOLERANCE = 1e-4
SWAP = make_triple("a red circle on the left , white background", "a red hexagon on the left , white background")
REFINE = make_triple("a red circle on the left", "a big red circle on the left , under a blue sky")


def check_against_reference(loaded, cfg, triples, tolerance=TOLERANCE):
    renderer = CandidateRenderer(loaded, cfg)
    specs = shard_specs(3, triples, cfg)
    result = renderer.sample_chunk({t.triple_id: t for t in triples}, specs)
    assert not result.failures
    by_id = {t.triple_id: t for t in triples}
    worst = 0.0
    for c, spec in enumerate(specs):
        ref = reference_candidate(loaded.pipe, cfg, by_id[spec.triple_id], spec, renderer.latent_shape)
        worst = max(worst, (ref[0] - result.source_latents[result.source_of[c]]).abs().max().item(),
                    (ref[1] - result.edited_latents[c]).abs().max().item())
    assert worst <= tolerance, f"fast path differs from the reference by {worst:.2e}"
    return result, specs


@pytest.mark.parametrize("mode, extra", [
    ("self", {}),
    ("cross", {"cross_reweight": 2.0}),
    ("none", {}),
])
def test_fast_path_matches_reference(loaded, tiny_sd_dir, mode, extra):
    cfg = render_config(tiny_sd_dir, mode=mode, **extra)
    result, specs = check_against_reference(loaded, cfg, [SWAP, REFINE])
    # The shared source rows and prefixes were really shared.
    assert result.unet_rows < 4 * cfg.steps * len(specs)


def test_cross_mode_covers_swap_and_refine(loaded):
    from datagen.p2p.alignment import align_captions

    tok = loaded.pipe.tokenizer
    assert align_captions(tok, SWAP.input_caption, SWAP.output_caption).kind == "swap"
    assert align_captions(tok, REFINE.input_caption, REFINE.output_caption).kind == "refine"


@pytest.mark.parametrize("scheduler, tolerance", [
    ("DPMSolverMultistepScheduler", TOLERANCE),
    ("DDPMScheduler", TOLERANCE),
    ("LMSDiscreteScheduler", TOLERANCE),
    # Heun's second-order correction amplifies float32 rounding: with no sharing at all
    # (mode none) batched and one-at-a-time runs already differ by ~5e-4 on latents of ~50.
    ("HeunDiscreteScheduler", 1e-3),
])
def test_fast_path_matches_reference_with_other_schedulers(loaded, tiny_sd_dir, monkeypatch, scheduler, tolerance):
    # Multistep state (DPM-Solver; LMS takes no generator), per-row stochastic noise (DDPM) and
    # two UNet evaluations per step (Heun), across forked groups.
    monkeypatch.setattr(loaded.pipe, "scheduler", make_scheduler(scheduler, loaded.pipe.scheduler.config))
    check_against_reference(loaded, render_config(tiny_sd_dir, mode="self", num_candidates=2, steps=3), [SWAP],
                            tolerance)


def test_sharing_changes_the_edited_branch_and_not_the_source(loaded, tiny_sd_dir):
    results = {}
    for mode in ("self", "none"):
        cfg = render_config(tiny_sd_dir, mode=mode, p_min=0.7, p_max=0.9)
        specs = shard_specs(3, [SWAP], cfg)
        results[mode] = CandidateRenderer(loaded, cfg).sample_chunk({SWAP.triple_id: SWAP}, specs)
    a, b = results["self"], results["none"]
    assert torch.allclose(a.source_latents, b.source_latents, atol=TOLERANCE)
    assert (a.edited_latents - b.edited_latents).abs().amax(dim=(1, 2, 3)).min() > 1e-2


def test_candidates_sharing_a_seed_fork_at_their_smallest_p(loaded, tiny_sd_dir):
    from datagen.records import CandidateSpec

    cfg = render_config(tiny_sd_dir, steps=6)
    # Same seed and cfg; p 0.1 and 0.15 share 1 step, 0.5 shares 3: two final groups of edited rows.
    specs = [CandidateSpec(f"{SWAP.triple_id}_{i:04d}", SWAP.triple_id, i, 11, p, 2.0, "self")
             for i, p in enumerate((0.1, 0.15, 0.5))]
    result = CandidateRenderer(loaded, cfg).sample_chunk({SWAP.triple_id: SWAP}, specs)
    assert len(result.source_latents) == 1
    assert result.edited_twin == [0, 0, 2]
    assert torch.equal(result.edited_latents[0], result.edited_latents[1])
    assert not torch.allclose(result.edited_latents[0], result.edited_latents[2])
    # step 0: 1 source + 1 edited lane; steps 1..: 1 source + 2 edited lanes; x2 for CFG
    assert result.unet_rows == 2 * (2 + 3 * 5)


def test_bfloat16_on_cpu_renders_what_float32_renders(loaded, tiny_sd_dir):
    # The shapes rounds render in bf16 where the CPU has it natively (docs/benchmarks.md): the same
    # rows, groups and float32 scheduler, landing near the float32 latents: nearer than attention
    # sharing itself moves them (cross mode against no sharing, in float32), else bf16 could erase
    # the very effect Prompt-to-Prompt is there for.
    from datagen.p2p.loading import load_pipeline

    loaded16 = load_pipeline(str(tiny_sd_dir), dtype="bfloat16")
    assert loaded16.pipe.unet.dtype == torch.bfloat16
    by_id = {t.triple_id: t for t in (SWAP, REFINE)}

    def render(pipeline, mode):
        cfg = render_config(tiny_sd_dir, mode=mode)
        return CandidateRenderer(pipeline, cfg).sample_chunk(by_id, shard_specs(3, [SWAP, REFINE], cfg))

    r32, r16, unshared = render(loaded, "cross"), render(loaded16, "cross"), render(loaded, "none")
    assert not r16.failures and r16.edited_latents.dtype == torch.float32   # the scheduler keeps float32
    assert r16.unet_rows == r32.unet_rows and r16.edited_twin == r32.edited_twin
    scale = r32.edited_latents.abs().amax()
    rel = ((r16.edited_latents - r32.edited_latents).abs().amax() / scale).item()
    sharing = ((unshared.edited_latents - r32.edited_latents).abs().amax() / scale).item()
    print(f"max |d latents| / max |latents|: bf16 vs fp32 {rel:.3g}, cross sharing vs none {sharing:.3g}")
    assert 0 < rel < sharing


def test_cross_mode_shares_self_attention_maps_only_up_to_16x16_queries(loaded, tiny_sd_dir, monkeypatch):
    # P2P replaces self-attention maps only in layers of at most 16x16 queries. At 64 px the tiny
    # model's outer attention layers have 32x32 queries (its mid block 16x16): the fast path and
    # the reference agree there, and lifting the limit changes the edited branch well past the
    # tolerance, so the limit is really applied (at 32 px every layer is within it).
    import datagen.p2p.render as render

    cfg = render_config(tiny_sd_dir, mode="cross", height=64, width=64, num_candidates=2, steps=4,
                        p_min=0.8, p_max=0.9)
    limited, specs = check_against_reference(loaded, cfg, [SWAP])
    monkeypatch.setattr(render, "P2P_SELF_MAX_TOKENS", 10**9)
    lifted = CandidateRenderer(loaded, cfg).sample_chunk({SWAP.triple_id: SWAP}, specs)
    assert torch.allclose(limited.source_latents, lifted.source_latents, atol=TOLERANCE)
    assert (limited.edited_latents - lifted.edited_latents).abs().max() > 100 * TOLERANCE
