"""``editsynth plan``: what a pipeline will cost before it runs: UNet rows, FLOPs, storage, GPU-hours.

Pure arithmetic on the config and on throughputs measured by bench/ (docs/benchmarks.md): no
model is loaded, nothing is rendered. Every figure that is assumed rather than read from the
config is listed with the output, so a reader can judge the projection.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field

from .config import ConfigError, PipelineConfig, load_config

# Measured on one NVIDIA H200, docs/benchmarks.md (2026-11-30):
RENDER_PAIRS_PER_S = 2.47       # Stage 2, SD v1.5 size, 512 px, fp16, self mode, batch 8 ...
RENDER_BENCH_STEPS = 20         # ... at 20 steps (bench/p2p.py --model sd15 --steps 20)
RENDER_BENCH_PIXELS = 512 * 512
CLIP_IMAGES_PER_S = 1805        # Stage 3, ViT-L/14, fp16, batch 128 (bench/filter.py)
CLIP_BENCH_MODEL = "ViT-L-14"
# Counted, not timed (docs/benchmarks.md): FLOPs of one UNet row of SD v1.5 at 512 px (64x64 latents).
UNET_FLOPS_PER_ROW_SD15_512 = 0.68e12   # 677.2 GFLOP
# Measured by bench/scale.py (docs/benchmarks.md): the filter stage's parquet, per candidate row.
SCORE_BYTES_PER_ROW = 42
# Assumed, not measured here: seconds an OpenAI-compatible server takes per triple reply (a short
# gpt-4o-mini-sized completion), and bytes per pixel of one photographic RGB render.
LLM_SECONDS_PER_REPLY = 2.0
BYTES_PER_PIXEL = {"png": 1.5, "jpg": 0.56}   # png ~12 bit/px; jpg at quality 100 ~4.5 bit/px


@dataclass
class Plan:
    pipeline: str
    triples: int
    captions_wall_hours: float | None   # Stage 1 runs before rendering starts: the GPUs wait this long
    candidates_per_triple: int
    candidates: int
    gpus: int
    unet_rows: int
    unet_rows_at_most: bool             # waves / previews stop candidates early: the figure is a bound
    unet_flops: float | None
    render_gpu_hours: float | None
    render_wall_hours: float | None
    units: int                          # work units (shards) of each stage: captions.shard_size triples each
    render_unit_gpu_minutes: float | None   # what a crash of one render actor can cost at most
    filter_clip_images: int
    filter_gpu_hours: float | None
    filter_wall_hours: float | None
    scores_bytes: int
    render_images_bytes: int
    kept_images_bytes_max: int
    export_pairs_max: int
    export_bytes_max: int
    assumptions: list[str] = field(default_factory=list)


def plan(cfg: PipelineConfig, name: str, gpus: int | None = None) -> Plan:
    """The projection of ``cfg``; ``gpus`` defaults to the render stage's actors x GPUs per actor."""
    r, f, e = cfg.render, cfg.filter, cfg.export
    triples = cfg.captions.num_triples
    candidates = triples * r.num_candidates
    gpus = gpus or max(1, int(r.resources.actors * r.resources.num_gpus))
    notes = [f"GPU throughputs are one NVIDIA H200's (docs/benchmarks.md), scaled linearly to {gpus} GPU(s) "
             "with no time lost between shards"]
    # Two branches (source, edited) x two CFG halves per candidate per step; candidates_per_seed > 1
    # shares source rows and edited prefixes (data-dependent), so this is then an upper bound.
    rows = 4 * r.steps * candidates
    notes.append(f"UNet rows = 4 (source and edited branch, each with its CFG pair) x {r.steps} steps x candidates"
                 + ("; an upper bound: candidates_per_seed > 1 shares rows" if r.candidates_per_seed > 1 else ""))
    levers = []
    if r.waves is not None:
        w = r.waves
        levers.append(f"waves of {w.size} candidates stop a triple once {w.k} pass by {w.margin} (enough) or after "
                      f"{w.m} waves with none within {w.near} of passing (hopeless)"
                      + (f", or after one wave with every scored candidate over {w.far} short of passing"
                         if w.far is not None else "")
                      + (f"; after {w.rescue_after} waves only triples with no pass yet and one within "
                         f"{w.rescue_near} of passing go on" if w.rescue_after is not None else ""))
    if r.preview is not None:
        levers.append(f"previews at {r.preview.fraction} of the steps ({r.preview.decoder} decoder) stop the candidates "
                      + (f"the rule {r.preview.rule} predicts to fail" if r.preview.rule
                         else "of no rule yet: they are only recorded (calibrate one: editsynth preview-rule)"))
    if levers:
        notes.append("UNet rows are the most this can take (every candidate to the end): " + "; ".join(levers)
                     + ". What they save depends on the scores; the render stats count it per shard "
                       "(unet_rows_saved_waves, unet_rows_saved_preview)")
    if r.steps_reference is not None and r.steps_reference != r.steps:
        notes.append(f"{r.steps} steps instead of {r.steps_reference}: {r.steps / r.steps_reference:.2f} of the rows "
                     "per candidate (the render stats count unet_rows_saved_steps)")
    height, width = r.height or 512, r.width or 512
    sd_size = r.model != "shapes"
    flops = render_h = render_wall = unit_minutes = None
    if sd_size:
        scale = height * width / RENDER_BENCH_PIXELS
        flops = rows * UNET_FLOPS_PER_ROW_SD15_512 * scale
        pairs_per_s = RENDER_PAIRS_PER_S * RENDER_BENCH_STEPS / r.steps / scale
        render_h = candidates / pairs_per_s / 3600
        render_wall = render_h / gpus
        unit_minutes = cfg.captions.shard_size * r.num_candidates / pairs_per_s / 60
        notes.append(f"render: {r.model} is taken to be SD v1.5-sized: {RENDER_PAIRS_PER_S} pairs/s at "
                     f"{RENDER_BENCH_STEPS} steps and 512 px, scaled to {r.steps} steps and {height}x{width} px "
                     f"(cost proportional to steps and pixels): {pairs_per_s:.3f} pairs/s per GPU")
        notes.append(f"FLOPs: {UNET_FLOPS_PER_ROW_SD15_512 / 1e12:.2f} TFLOP per UNet row at 512 px, "
                     "scaled with pixels")
    else:
        notes.append(f"render: no GPU throughput measured for model {r.model!r}: FLOPs and GPU-hours not projected")
    c = cfg.captions
    captions_wall = None
    if c.backend == "openai":
        in_flight = c.resources.actors * c.openai.concurrency
        captions_wall = triples * LLM_SECONDS_PER_REPLY / in_flight / 3600
        notes.append(f"captions: one request per triple, {LLM_SECONDS_PER_REPLY} s per reply (assumed), "
                     f"{in_flight} in flight ({c.resources.actors} actors x concurrency {c.openai.concurrency})")
    clip_images = 2 * candidates   # captions are encoded once per triple: a rounding error beside the images
    filter_h = filter_wall = None
    if f.clip_model == CLIP_BENCH_MODEL:
        filter_h = clip_images / CLIP_IMAGES_PER_S / 3600
        filter_wall = filter_h / gpus
        notes.append(f"filter: {CLIP_IMAGES_PER_S} images/s for {CLIP_BENCH_MODEL} (2 images per candidate)")
    else:
        notes.append(f"filter: no GPU throughput measured for CLIP {f.clip_model!r}: GPU-hours not projected")

    image_bytes = 2 * height * width * BYTES_PER_PIXEL[r.image_format]
    export_image_bytes = 2 * height * width * BYTES_PER_PIXEL[e.image_format]
    pairs_max = triples * f.max_pairs_per_triple
    store = r.store
    notes.append(f"images: {BYTES_PER_PIXEL[r.image_format]} bytes per pixel for {r.image_format} "
                 f"(assumed for photographic renders), {height}x{width} px, 2 images per candidate")
    notes.append("render images: render.store = 'all': every candidate's images, in render tars" if store == "all"
                 else "render images: none (render.store = 'kept': scored as rendered, stored only inside the keep bound)")
    notes.append("kept images: those inside the filter's keep bound, written once; how many is known only after "
                 "scoring, so the figure is the most it can be (all candidates)")
    if store == "kept":
        notes.append("filter: scored inside the render actors as they render (render.store = 'kept'): its "
                     "GPU-hours add to the render stage's wall time")
    notes.append(f"scores: {SCORE_BYTES_PER_ROW} bytes per candidate row (bench/scale.py's tables)")
    notes.append(f"export: at most {f.max_pairs_per_triple} pairs per triple")
    return Plan(
        pipeline=name, triples=triples, captions_wall_hours=captions_wall, candidates_per_triple=r.num_candidates,
        candidates=candidates, gpus=gpus, unet_rows=rows, unet_rows_at_most=bool(levers), unet_flops=flops,
        render_gpu_hours=render_h, render_wall_hours=render_wall,
        units=cfg.captions.num_shards, render_unit_gpu_minutes=unit_minutes,
        filter_clip_images=clip_images, filter_gpu_hours=filter_h, filter_wall_hours=filter_wall,
        scores_bytes=candidates * SCORE_BYTES_PER_ROW,
        render_images_bytes=int(candidates * image_bytes) if store == "all" else 0,
        kept_images_bytes_max=int(candidates * image_bytes), export_pairs_max=pairs_max,
        export_bytes_max=int(pairs_max * export_image_bytes), assumptions=notes)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:,.1f} {unit}"
        n /= 1000


def _hours(h: float | None, what: str = "h") -> str:
    if h is None:
        return "not projected"
    return f"{h:,.1f} {what}" + (f" ({h / 24:,.1f} days)" if h >= 48 else "")


def format_plan(p: Plan) -> str:
    flops = "not projected" if p.unet_flops is None else f"{p.unet_flops:.3g}"
    lines = [
        f"pipeline {p.pipeline}: {p.triples:,} triples x {p.candidates_per_triple} candidates "
        f"= {p.candidates:,} candidates",
        f"captions: wall {_hours(p.captions_wall_hours)} (LLM-bound, before rendering starts)",
        f"render:  {'at most ' if p.unet_rows_at_most else ''}{p.unet_rows:,} UNet forward passes (rows), {flops} FLOPs; "
        f"{_hours(p.render_gpu_hours, 'GPU-hours')}, wall {_hours(p.render_wall_hours)} on {p.gpus} GPU(s)",
        f"units:   {p.units:,} work units of {p.triples // max(p.units, 1):,} triple(s) each per stage; a render unit "
        f"is {'not projected' if p.render_unit_gpu_minutes is None else f'{p.render_unit_gpu_minutes:,.1f} GPU-minutes'}"
        " (the most a lost actor costs)",
        f"filter:  {p.filter_clip_images:,} CLIP images; {_hours(p.filter_gpu_hours, 'GPU-hours')}, "
        f"wall {_hours(p.filter_wall_hours)} on {p.gpus} GPU(s)",
        f"storage: scores {_size(p.scores_bytes)}, render images {_size(p.render_images_bytes)}, "
        f"kept images at most {_size(p.kept_images_bytes_max)}, export at most {p.export_pairs_max:,} pairs "
        f"({_size(p.export_bytes_max)})",
        "assumptions:",
        *(f"  - {a}" for a in p.assumptions),
    ]
    return "\n".join(lines)


def _plan_command(args) -> int:
    try:
        cfg = load_config(args.pipeline, args.set or [], args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    p = plan(cfg, args.pipeline, args.gpus)
    print(json.dumps(asdict(p), indent=1) if args.json else format_plan(p))
    return 0


def register(sub) -> None:
    p = sub.add_parser("plan", help="project a pipeline's UNet passes, FLOPs, storage and GPU-hours before running it")
    p.add_argument("--pipeline", required=True, help="named pipeline of pipelines.yaml (paper, smoke, shapes)")
    p.add_argument("--gpus", type=int, default=None,
                   help="GPUs to spread over (default: render.resources.actors x num_gpus)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key (repeatable)")
    p.add_argument("--config", default=None, help="pipelines file (default: the packaged pipelines.yaml)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.set_defaults(func=_plan_command)
