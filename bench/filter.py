"""Stage 3 scoring throughput: our batched scorer vs the original filter's one-pair-at-a-time loop.

Reference = how the InstructPix2Pix generator scored: per candidate, encode both captions and
both images (batch of one pair), no text cache. Ours = ClipScorer: many candidates' images per
image-tower call, captions encoded once per triple. Same model, same images, same process.
Images are given decoded (PIL), so this measures preprocessing + CLIP, not PNG decoding.

  python bench/filter.py --model tiny                 # the tests' tiny random CLIP
  python bench/filter.py --model shapes               # the shipped tiny CLIP's architecture, random
  python bench/filter.py --model ViT-B-32 --n 64      # mid-size open_clip, random weights
  python bench/filter.py --model ViT-L-14 --device cuda --precision fp16   # the paper's size
Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from datagen.clip.loading import load_clip  # noqa: E402
from datagen.clip.metrics import clip_metrics  # noqa: E402
from datagen.filter.scorer import ClipScorer  # noqa: E402
from datagen.records import Candidate  # noqa: E402


def model_source(name: str, tmp: Path) -> str:
    if name in ("tiny", "shapes"):
        from datagen.shapes.models import build_clip, save_clip

        model, preset = build_clip("test" if name == "tiny" else "shapes")
        return "local-dir:" + str(save_clip(model, preset, tmp / name))
    return name   # a built-in open_clip name: random weights (pretrained="")


def make_inputs(n: int, per_triple: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    cands, pairs = [], []
    for i in range(n):
        t = i // per_triple
        cands.append(Candidate(candidate_id=f"t{t:04d}_{i:04d}", triple_id=f"t{t:04d}", index=i, seed=i, p=0.5,
                               cfg_scale=7.5, mode="self", steps=20, model_id="bench",
                               input_caption=f"a photo of thing {t} on a table", instruction="make it red",
                               output_caption=f"a photo of a red thing {t} on a table"))
        pairs.append(tuple(Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(2)))
    return cands, pairs


@torch.no_grad()
def reference_scores(scorer: ClipScorer, cands, pairs):
    """The original loop: one pair per forward, both captions re-encoded for every candidate."""
    out = []
    for c, (a, b) in zip(cands, pairs):
        img = scorer.encode_images([a, b])
        txt = scorer.encode_texts([c.input_caption, c.output_caption])
        m = clip_metrics(img[:1], img[1:], txt[:1], txt[1:])
        out.append([float(m[k][0]) for k in ("sim_0", "sim_1", "sim_image", "sim_direction")])
    return out


def timed(fn, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="tiny | shapes | an open_clip built-in name (random weights)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    ap.add_argument("--n", type=int, default=256, help="candidates (2 images each)")
    ap.add_argument("--per-triple", type=int, default=16, help="candidates per triple (captions shared)")
    ap.add_argument("--batch", type=int, default=64, help="candidates per scorer batch")
    ap.add_argument("--image-size", type=int, default=0, help="input image side; default: the model's own")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)   # on a shared 2-core box, 1 thread can beat 2 (no spin-waiting)

    with tempfile.TemporaryDirectory() as tmp:
        clip = load_clip(model_source(args.model, Path(tmp)), "", device=args.device, precision=args.precision)
    size = args.image_size or clip.image_size[0]
    cands, pairs = make_inputs(args.n, args.per_triple, size)
    params = sum(p.numel() for p in clip.model.parameters()) / 1e6
    scorer = ClipScorer(clip, batch_size=args.batch)
    scorer.score(cands[:args.batch], pairs[:args.batch])   # warm-up

    def ours():
        scorer._text_cache.clear()   # count the text encoding too
        return scorer.score(cands, pairs)

    t_ours, got = timed(ours, args.repeats)
    t_ref, want = timed(lambda: reference_scores(scorer, cands, pairs), args.repeats)
    diff = float(np.abs(np.array([[s.sim_0, s.sim_1, s.sim_image, s.sim_direction] for s in got]) - np.array(want)).max())
    images = 2 * len(cands)
    result = {
        "model": args.model, "params_m": round(params, 2), "device": str(clip.device), "dtype": str(clip.dtype),
        "torch_threads": torch.get_num_threads(), "image_size": size, "model_image_size": clip.image_size[0],
        "candidates": len(cands), "batch": args.batch,
        "images_per_s_ours": round(images / t_ours, 1), "images_per_s_reference": round(images / t_ref, 1),
        "speedup": round(t_ref / t_ours, 2), "max_abs_diff_vs_reference": diff,
    }
    print(f"{args.model} ({params:.1f}M params, {size}px -> {clip.image_size[0]}px, {clip.device}, {clip.dtype}): "
          f"reference {result['images_per_s_reference']} img/s, ours {result['images_per_s_ours']} img/s, "
          f"x{result['speedup']}; max |diff| {diff:.2e}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
