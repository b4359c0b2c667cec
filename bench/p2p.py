"""Benchmark: candidate pairs per second of the fast P2P renderer vs the naive reference.

Both run in this process, on the same model, triples, candidate settings and device; both
go from settings to PNG bytes of the two images. The reference (datagen/p2p/reference.py)
renders one candidate at a time with explicit attention probabilities; the fast path
(datagen/p2p/render.py) batches candidates, shares source rows and edited prefixes, and
uses fused attention. Rounds alternate reference/fast; the best round of each counts.

    python bench/p2p.py --device cpu --model test
    python bench/p2p.py --device cpu --model shapes --candidates-per-seed 4
    python bench/p2p.py --device cuda --model sd15          # SD-1.5-sized random UNet, 512x512
    python bench/p2p.py --device cpu --model shapes --threads 1 --compare-dtype bfloat16

``--compare-dtype`` also times the fast path of a second copy of the model in that dtype, in the
same alternating rounds (``compare_speedup``: its pairs/s over the first dtype's fast path).

Models: ``test``/``shapes`` (datagen.shapes.models presets, random weights), ``sd15`` (SD v1.5
architecture, random weights: weights do not change the cost), or a hub id / diffusers dir.
The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import get_args

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from datagen.config import RenderConfig, Resources  # noqa: E402
from datagen.p2p.loading import LoadedPipeline, load_pipeline, prepare_pipeline, select_device, select_dtype  # noqa: E402
from datagen.p2p.reference import decode_reference, reference_candidate  # noqa: E402
from datagen.p2p.render import CandidateRenderer, RenderCounters, encode_image  # noqa: E402
from datagen.p2p.specs import chunk, shard_specs  # noqa: E402
from datagen.records import Triple  # noqa: E402

TRIPLES = [
    Triple("bench0", "a red circle on the left , white background", "make it a hexagon",
           "a red hexagon on the left , white background"),
    Triple("bench1", "a small blue square on the right", "add a green triangle",
           "a small blue square on the right and a green triangle on the left"),
]
BY_ID = {t.triple_id: t for t in TRIPLES}

# Dense fp16/bf16 tensor-core peaks (FLOP/s) by device name, from the vendors' datasheets.
GPU_PEAK_FLOPS = {"H100 SXM": 989.4e12, "H100 PCIe": 756.0e12, "H100 NVL": 835.0e12, "H100": 989.4e12,
                  "H200": 989.4e12, "A100": 312.0e12, "L40S": 362.0e12, "L4": 121.0e12, "A10G": 70.0e12}


def sd15_pipeline():
    """Stable Diffusion v1.5's architecture with random weights, built offline."""
    from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from datagen.shapes.models import build_scheduler, build_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=2, sample_size=512)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu"))
    return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=build_tokenizer(77), unet=unet,
                                   scheduler=EulerAncestralDiscreteScheduler.from_config(build_scheduler().config),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def load_model(name: str, device: str, dtype: str = "auto") -> LoadedPipeline:
    if name == "sd15":
        dev = select_device(device)
        return prepare_pipeline(sd15_pipeline(), "sd15-random", "built in memory", dev, select_dtype(dtype, dev))
    if name in ("test", "shapes"):
        from datagen.shapes.models import build_t2i_pipeline

        with tempfile.TemporaryDirectory(prefix=f"bench-p2p-{name}-") as path:
            build_t2i_pipeline(name, seed=0).save_pretrained(path)   # loaded the real way, from a directory
            loaded = load_pipeline(path, device=device, dtype=dtype)
        loaded.model_id = f"{name}-random"
        return loaded
    return load_pipeline(name, device=device, dtype=dtype)


def run_fast(renderer: CandidateRenderer, specs, batch_size: int, counters: RenderCounters):
    for part in chunk(specs, batch_size):
        renderer.render_chunk(BY_ID, part, counters)


def run_reference(loaded: LoadedPipeline, cfg: RenderConfig, specs, latent_shape):
    latents = []
    for spec in specs:
        lat = reference_candidate(loaded.pipe, cfg, BY_ID[spec.triple_id], spec, latent_shape)
        images = decode_reference(loaded.pipe, lat)
        pixels = (images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype("uint8")
        [encode_image(p, cfg.image_format) for p in pixels]
        latents.append(lat)
    return latents


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def unet_flops_per_row(loaded: LoadedPipeline, renderer: CandidateRenderer) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    unet = loaded.pipe.unet
    x = torch.randn(2, *renderer.latent_shape, device=loaded.device, dtype=unet.dtype)
    ctx = torch.randn(2, loaded.pipe.tokenizer.model_max_length, unet.config.cross_attention_dim,
                      device=loaded.device, dtype=unet.dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(x, 500, encoder_hidden_states=ctx)
    return counter.get_total_flops() / 2


def gpu_peak() -> float | None:
    name = torch.cuda.get_device_name()
    for key, peak in GPU_PEAK_FLOPS.items():
        if all(part in name for part in key.split()):
            return peak
    return None


DTYPES = get_args(RenderConfig.model_fields["dtype"].annotation)   # render.dtype's values


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--model", default="test", help="test | shapes | sd15 | hub id | diffusers dir")
    ap.add_argument("--mode", choices=["self", "cross", "none"], default="self")
    ap.add_argument("--candidates", type=int, default=8, help="candidates per triple (2 triples)")
    ap.add_argument("--candidates-per-seed", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8, help="candidates per sampling loop")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--dtype", choices=DTYPES, default="auto", help="render.dtype of both paths")
    ap.add_argument("--compare-dtype", choices=DTYPES, default=None,
                    help="also time the fast path with the model in this dtype, side by side")
    ap.add_argument("--rounds", type=int, default=2, help="alternating timed rounds; the best of each counts")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--clock", choices=["wall", "process"], default="wall",
                    help="process: CPU seconds of this process (a fair figure on a shared, busy CPU; CPU only)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "process" and args.device == "cuda":
        ap.error("--clock process measures CPU work; use wall on cuda")
    clock = time.process_time if args.clock == "process" else time.perf_counter

    loaded = load_model(args.model, args.device, args.dtype)
    cfg = RenderConfig(model=loaded.model_id, mode=args.mode, num_candidates=args.candidates, steps=args.steps,
                       candidates_per_seed=args.candidates_per_seed, cfg_min=3.0, cfg_max=6.0,
                       resources=Resources(batch_size=args.batch_size))
    renderer = CandidateRenderer(loaded, cfg)
    other = None
    if args.compare_dtype:
        other = CandidateRenderer(load_model(args.model, args.device, args.compare_dtype), cfg)
    specs = shard_specs(0, TRIPLES, cfg)
    n = len(specs)
    dev = loaded.device
    print(f"model {loaded.model_id} on {dev} ({loaded.dtype}), {renderer.height}x{renderer.width}, mode {cfg.mode}, "
          f"{n} candidates x {cfg.steps} steps, batch {args.batch_size}, {args.candidates_per_seed} per seed, "
          f"{torch.get_num_threads()} CPU threads")

    # Warm-up (kernels, allocator), not timed.
    run_fast(renderer, specs[:2], 2, RenderCounters())
    run_reference(loaded, cfg, specs[:1], renderer.latent_shape)
    if other:
        run_fast(other, specs[:2], 2, RenderCounters())

    def timed(fn, *fn_args):
        """(fn's result, seconds on the clock), the device's queue drained at both ends."""
        sync(dev)
        t0 = clock()
        out = fn(*fn_args)
        sync(dev)
        return out, clock() - t0

    best_ref = best_fast = best_other = float("inf")
    for r in range(args.rounds):
        ref_latents, ref_s = timed(run_reference, loaded, cfg, specs, renderer.latent_shape)
        best_ref = min(best_ref, ref_s)
        counters = RenderCounters()
        _, fast_s = timed(run_fast, renderer, specs, args.batch_size, counters)
        if fast_s < best_fast:
            best_fast, best_counters = fast_s, counters
        line = f"round {r}: reference {n / ref_s:.3f} pairs/s, fast {n / fast_s:.3f} pairs/s"
        if other:
            _, other_s = timed(run_fast, other, specs, args.batch_size, RenderCounters())
            best_other = min(best_other, other_s)
            line += f", fast in {args.compare_dtype} {n / other_s:.3f} pairs/s"
        print(line)

    # Equal output: the fast path's final latents against the reference's, first chunk.
    first = chunk(specs, args.batch_size)[0]
    res = renderer.sample_chunk(BY_ID, first)
    diff = max(max((ref_latents[c][0] - res.source_latents[res.source_of[c]]).abs().max().item(),
                   (ref_latents[c][1] - res.edited_latents[c]).abs().max().item()) for c in range(len(first)))

    fast, ref = n / best_fast, n / best_ref
    out = {"pairs_per_s_fast": round(fast, 4), "pairs_per_s_reference": round(ref, 4), "speedup": round(fast / ref, 3),
           "device": dev.type, "dtype": str(loaded.dtype).removeprefix("torch."), "model": loaded.model_id,
           "mode": cfg.mode, "steps": cfg.steps, "candidates": n,
           "batch_size": args.batch_size, "candidates_per_seed": args.candidates_per_seed,
           "unet_rows_fast": best_counters.unet_rows, "unet_rows_reference": 4 * cfg.steps * n,
           "max_abs_diff_latents": diff, "threads": torch.get_num_threads(), "clock": args.clock}
    print(f"UNet rows: fast {best_counters.unet_rows} vs reference {4 * cfg.steps * n} "
          f"({1 - best_counters.unet_rows / (4 * cfg.steps * n):.1%} fewer; the fast path's UNet calls took "
          f"{best_counters.seconds_unet:.2f}s wall)")
    print(f"max |latents fast - reference| = {diff:.2e}")
    if other:
        # The same random weights, rounded to the other dtype: how far its final latents land.
        res_other = other.sample_chunk(BY_ID, first)
        d_other = max((res.source_latents - res_other.source_latents).abs().max().item(),
                      (res.edited_latents - res_other.edited_latents).abs().max().item())
        out.update({"compare_dtype": args.compare_dtype, "pairs_per_s_fast_compare": round(n / best_other, 4),
                    "compare_speedup": round(best_fast / best_other, 3), "compare_max_abs_diff_latents": d_other})
        print(f"fast path in {args.compare_dtype}: {n / best_other:.3f} pairs/s = {best_fast / best_other:.2f}x "
              f"the {out['dtype']} fast path; max |latents difference| = {d_other:.2e}")
    if dev.type == "cuda":
        flops = unet_flops_per_row(loaded, renderer) * best_counters.unet_rows
        peak = gpu_peak()
        achieved = flops / best_counters.seconds_unet
        out["unet_tflops"] = round(achieved / 1e12, 2)
        out["unet_flops_utilisation"] = round(achieved / peak, 4) if peak else None
        out["gpu"] = torch.cuda.get_device_name()
        print(f"UNet: {achieved / 1e12:.1f} TFLOP/s on {out['gpu']}"
              + (f" = {out['unet_flops_utilisation']:.1%} of its fp16 peak" if peak else " (peak unknown)"))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
