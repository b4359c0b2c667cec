"""Measure an editor the paper's way: a CLIP sweep against SDEdit (InstructPix2Pix, Fig. 8).

``evaluate_sweep``: on a held-out split, edit every example at text guidance 7.5 and image
guidance 1.0..2.2; per setting, the mean CLIP directional similarity cos(img_out - img_in,
txt_out - txt_in) and CLIP image similarity cos(img_in, img_out) (the filter's ``sim_direction``
and ``sim_image``); the same for SDEdit (img2img with the output caption on the editor's base
model) over a range of strengths; both curves on one plot -> ``eval.json`` + ``eval_plot.png``.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from datagen.clip.loading import LoadedClip, load_clip
from datagen.clip.metrics import clip_metrics
from datagen.config import EvalConfig
from datagen.records import seed_from
from model.editor.loading import load_editor, resolve_device
from model.editor.sampling import edit_batch
from model.training.data import DataError, load_examples

from .sdedit import load_sdedit, sdedit_batch

log = logging.getLogger(__name__)

SWEEP_FILE = "eval.json"
PLOT_FILE = "eval_plot.png"


@dataclass
class SweepPoint:
    setting: float                  # image guidance scale (editor) or strength (SDEdit)
    clip_directional_similarity: float
    clip_image_similarity: float


def _point(clip: LoadedClip, setting: float, f_in, t_in, t_out, outputs) -> SweepPoint:
    m = clip_metrics(f_in, clip.image_features(outputs), t_in, t_out)
    return SweepPoint(setting, m["sim_direction"].mean().item(), m["sim_image"].mean().item())


def plot_sweep(editor_points: list[SweepPoint], sdedit_points: list[SweepPoint], path: Path,
               title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=120)
    for points, label, marker, fmt in ((editor_points, "editor (image guidance)", "o", "{:.1f}"),
                                       (sdedit_points, "SDEdit (strength)", "s", "{:.2f}")):
        if not points:
            continue
        xs = [p.clip_directional_similarity for p in points]
        ys = [p.clip_image_similarity for p in points]
        ax.plot(xs, ys, marker=marker, label=label)
        for p, x, y in zip(points, xs, ys):
            ax.annotate(fmt.format(p.setting), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("CLIP text-image direction similarity")
    ax.set_ylabel("CLIP image similarity")
    ax.set_title(title or "Edit strength vs consistency")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def evaluate_sweep(editor_model: str, data: str, cfg: EvalConfig, out: str | Path, base_model: str,
                   device: str = "auto") -> dict:
    """The paper's sweep on a held-out split; writes eval.json and eval_plot.png under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    examples = load_examples(data, cfg.split, cfg.num_examples, cfg.seed)
    missing = [ex.key for ex in examples if not (ex.input_caption and ex.output_caption)]
    if missing:
        raise DataError(f"{len(missing)} held-out examples lack input/output captions (e.g. {missing[0]!r}); "
                        "CLIP directional similarity needs both")
    editor = load_editor(editor_model, device=device)
    dev = resolve_device(device)
    clip = load_clip(cfg.clip_model, cfg.clip_pretrained, str(dev), precision="fp32")

    size = editor.native_resolution
    inputs = [ex.input_image.resize((size, size), Image.BICUBIC) for ex in examples]
    seeds = [seed_from(cfg.seed, ex.key) for ex in examples]
    f_in = clip.image_features(inputs)
    t_in = clip.text_features([ex.input_caption for ex in examples]).cpu()
    t_out = clip.text_features([ex.output_caption for ex in examples]).cpu()
    instructions = [ex.instruction for ex in examples]

    editor_points = []
    for s_img in cfg.image_guidance_scales:
        outputs = edit_batch(editor, inputs, instructions, cfg.steps, cfg.text_guidance_scale, s_img,
                             cfg.seed, cfg.batch_size, seeds, cfg.scheduler)
        editor_points.append(_point(clip, s_img, f_in, t_in, t_out, outputs))
        log.info("editor s_I=%.2f: %s", s_img, editor_points[-1])
    del editor

    sdedit_points = []
    if cfg.sdedit_strengths:
        sdedit = load_sdedit(base_model, dev, cfg.scheduler)
        captions = [ex.output_caption for ex in examples]
        for strength in cfg.sdedit_strengths:
            outputs = sdedit_batch(sdedit, inputs, captions, strength, cfg.steps, cfg.text_guidance_scale,
                                   seeds, cfg.batch_size)
            sdedit_points.append(_point(clip, strength, f_in, t_in, t_out, outputs))
            log.info("SDEdit strength=%.2f: %s", strength, sdedit_points[-1])

    plot = plot_sweep(editor_points, sdedit_points, out / PLOT_FILE, title=f"{Path(editor_model).name} on {cfg.split}")
    result = {
        "editor": editor_model, "base_model": base_model, "data": data, "split": cfg.split,
        "num_examples": len(examples), "text_guidance_scale": cfg.text_guidance_scale, "steps": cfg.steps,
        "scheduler": cfg.scheduler,
        "clip_model": cfg.clip_model, "clip_pretrained": cfg.clip_pretrained,
        "editor_sweep": [{"image_guidance_scale": p.setting,
                          "clip_directional_similarity": p.clip_directional_similarity,
                          "clip_image_similarity": p.clip_image_similarity} for p in editor_points],
        "sdedit": [{"strength": p.setting, "clip_directional_similarity": p.clip_directional_similarity,
                    "clip_image_similarity": p.clip_image_similarity} for p in sdedit_points],
        "plot": str(plot.name), "seconds": round(time.time() - started, 2), "device": str(dev),
    }
    (out / SWEEP_FILE).write_text(json.dumps(result, indent=1))
    return result
