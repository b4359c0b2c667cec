"""Edit latency: our path (model.editor.sampling.edit_images) against diffusers'
StableDiffusionInstructPix2PixPipeline, same model, same image, same settings, in one run.

    python bench/edit.py --device cpu                 # random shapes-size editor, 64 px, fp32
    python bench/edit.py --device cuda                # random SD-size editor, 512 px, fp16, eager + compiled
    python bench/edit.py --model timbrooks/instruct-pix2pix --device cuda

Both paths load the same saved pipeline directory and edit PIL in -> PIL out. Runs alternate
(ours, diffusers, ours, ...) so that a busy machine slows both alike; the median counts. The
outputs of one seed are compared: equal means at most 1 grey level apart in fp32, and a PSNR of
at least 35 dB in fp16 (kernels of another memory layout round differently). Last line: JSON.
On a machine whose cores are shared with other jobs, pass --threads 1: two contended OpenMP
threads spin-wait and make every figure (and the ratio) noise.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.editor.images import fit_for_edit  # noqa: E402
from model.editor.loading import load_editor, resolve_device  # noqa: E402
from model.editor.sampling import EditSettings, edit_images  # noqa: E402

INSTRUCTION = "make the circle green"


def build_random_editor(kind: str, out_dir: Path, dtype: torch.dtype) -> Path:
    """Save a randomly initialised InstructPix2Pix pipeline: 'shapes' (the shipped editor's
    architecture, 64 px) or 'sd' (Stable Diffusion v1.5's architecture, 512 px)."""
    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        StableDiffusionInstructPix2PixPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from datagen.shapes.models import (T2I_PRESETS, build_scheduler, build_text_encoder, build_tokenizer,
                                       build_unet, build_vae)

    torch.manual_seed(0)
    if kind == "shapes":
        p = T2I_PRESETS["shapes"]
        vae, text, tok = build_vae(p), build_text_encoder(p), build_tokenizer(p.context_length)
        unet = build_unet(p, in_channels=2 * p.latent_channels)
    elif kind == "sd":
        # Stable Diffusion v1.5's shapes (its unet/vae/text_encoder config.json), random weights.
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=8, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4)
        text = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
        tok = build_tokenizer(77)
    else:
        raise ValueError(f"unknown random model {kind!r}")
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=vae, text_encoder=text, tokenizer=tok, unet=unet,
        scheduler=EulerAncestralDiscreteScheduler.from_config(build_scheduler().config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.to(dtype=dtype).save_pretrained(out_dir)
    return out_dir


def test_picture(size: tuple[int, int]) -> Image.Image:
    w, h = size
    im = Image.new("RGB", size, (40, 90, 200))
    d = ImageDraw.Draw(im)
    d.ellipse((w * 0.1, h * 0.25, w * 0.45, h * 0.75), fill=(220, 30, 30))
    d.rectangle((w * 0.55, h * 0.3, w * 0.9, h * 0.7), fill=(240, 210, 40))
    return im


def compare(a: Image.Image, b: Image.Image) -> dict:
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mse = float(np.mean((x - y) ** 2))
    return {"max_abs_diff": float(np.abs(x - y).max()), "mean_abs_diff": float(np.abs(x - y).mean()),
            "psnr_db": 999.0 if mse == 0 else min(999.0, 10 * math.log10(255**2 / mse))}  # 999: identical


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--model", default="", help="a diffusers dir / hub id; default: random shapes (cpu), random SD (cuda)")
    p.add_argument("--resolution", type=int, default=None, help="default: the model's native size")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compile", choices=("auto", "yes", "no"), default="auto",
                   help="also time ours with torch.compile (auto: on cuda)")
    p.add_argument("--compile-mode", default="reduce-overhead")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    model = args.model or ("random-sd" if device.type == "cuda" else "random-shapes")
    tmp = tempfile.TemporaryDirectory(prefix="bench-edit-")
    path = str(build_random_editor(model.removeprefix("random-"), Path(tmp.name), dtype)
               if model.startswith("random-") else model)

    from diffusers import StableDiffusionInstructPix2PixPipeline

    ours = load_editor(path, device=str(device), dtype="float16" if dtype == torch.float16 else "float32")
    resolution = args.resolution or ours.native_resolution
    image = fit_for_edit(test_picture((resolution, resolution)), resolution, ours.size_multiple)
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(path, torch_dtype=dtype, safety_checker=None)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    settings = EditSettings(steps=args.steps, seed=0, resolution=resolution).for_editor(ours)  # same scales for both

    def run_ours(editor=ours):
        return edit_images(editor, [image], INSTRUCTION, settings)[0]

    def run_diffusers():
        return pipe(prompt=INSTRUCTION, image=image, num_inference_steps=args.steps, guidance_scale=settings.text_guidance,
                    image_guidance_scale=settings.image_guidance, generator=[torch.Generator().manual_seed(0)]).images[0]

    quality = compare(run_ours(), run_diffusers())  # also the warm-up
    equal = quality["max_abs_diff"] <= 1 if dtype == torch.float32 else quality["psnr_db"] >= 35
    paths = {"ours": run_ours, "diffusers": run_diffusers}
    compiled = None
    if args.compile == "yes" or (args.compile == "auto" and device.type == "cuda"):
        compiled = load_editor(path, device=str(device), dtype="float16" if dtype == torch.float16 else "float32",
                               compile_mode=args.compile_mode)
        start = time.perf_counter()
        quality_c = compare(run_ours(compiled), run_diffusers())
        run_ours(compiled)
        warmup = time.perf_counter() - start
        paths["ours_compiled"] = lambda: run_ours(compiled)

    # Rounds of every path in turn, so that the machine's ups and downs fall on all of them.
    times = {name: [] for name in paths}
    for _ in range(args.repeats):
        for name, fn in paths.items():
            times[name].append(timed(fn, device))
    med = {name: statistics.median(ts) for name, ts in times.items()}
    ours_s, ref_s = med["ours"], med["diffusers"]
    result = {"latency_ours_s": round(ours_s, 4), "latency_diffusers_s": round(ref_s, 4),
              "ratio": round(ours_s / ref_s, 3), "device": str(device), "model": model,
              "resolution": list(image.size), "steps": args.steps, "dtype": str(dtype).replace("torch.", ""),
              "threads": torch.get_num_threads(), "outputs_equal": bool(equal),
              **{k: round(v, 3) for k, v in quality.items()}}
    print(f"{'path':<24}{'median s':>10}{'runs':>6}{'ratio':>8}   output vs diffusers")
    print(f"{'diffusers pipeline':<24}{ref_s:>10.4f}{len(times['diffusers']):>6}{1:>8.3f}")
    print(f"{'ours (eager)':<24}{ours_s:>10.4f}{len(times['ours']):>6}{ours_s / ref_s:>8.3f}   "
          f"max diff {quality['max_abs_diff']:.0f}, psnr {quality['psnr_db']:.1f} dB")
    if compiled is not None:
        comp_s = med["ours_compiled"]
        equal_c = quality_c["max_abs_diff"] <= 1 if dtype == torch.float32 else quality_c["psnr_db"] >= 35
        result.update({"latency_ours_compiled_s": round(comp_s, 4), "ratio_compiled": round(comp_s / ref_s, 3),
                       "compiled": compiled.compiled, "compile_warmup_s": round(warmup, 1),
                       "outputs_equal_compiled": bool(equal_c), "max_abs_diff_compiled": quality_c["max_abs_diff"],
                       "psnr_db_compiled": round(quality_c["psnr_db"], 2)})
        print(f"{'ours (torch.compile)':<24}{comp_s:>10.4f}{len(times['ours_compiled']):>6}{comp_s / ref_s:>8.3f}   "
              f"max diff {quality_c['max_abs_diff']:.0f}, psnr {quality_c['psnr_db']:.1f} dB; "
              f"warm-up {warmup:.0f} s ({compiled.compiled})")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
