"""Measure an editor the paper's way (CLIP sweep vs SDEdit) and exactly (the shapes-world oracle).

``evaluate_sweep``: on a held-out split, edit every example at text guidance 7.5 and image
guidance 1.0..2.2; per setting, the mean CLIP directional similarity cos(img_out - img_in,
txt_out - txt_in) and CLIP image similarity cos(img_in, img_out); the same for SDEdit
(img2img with the output caption on the editor's base model) over a range of strengths;
both curves on one plot (InstructPix2Pix, Fig. 8) -> ``eval.json`` + ``eval_plot.png``.

``evaluate_oracle``: held-out RENDERED shapes-world scenes (negative seeds, never training
data), one held-out triple each, edited by the editor, by SDEdit and by nothing (identity);
the oracle judges whether the instructed change is visible (edit accuracy) and whether
everything else stayed (preservation), per edit kind -> ``oracle_edit.json``. The held-out
instructions use phrasings no training triple has ("get rid of the circle"); the same edits
phrased as training data phrases them are judged too (``seen_phrasing_*``), which separates
following a new wording from making the edit: a tiny text encoder trained on shapes-world
captions alone has no way to know that "get rid of" means "remove".
"""
from __future__ import annotations

import json
import logging
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from datagen.config import EvalConfig
from datagen.records import seed_from
from model.sampling import DEFAULT_SCHEDULER, EditSettings, edit_images, make_scheduler

log = logging.getLogger(__name__)

SWEEP_FILE = "eval.json"
PLOT_FILE = "eval_plot.png"
ORACLE_FILE = "oracle_edit.json"
PAIRS_ORACLE_FILE = "oracle_pairs.json"
ORACLE_RATES = ("edit_accuracy", "preservation", "edit_correct")   # edit made, rest kept, both
# Where each method's rates sit in oracle_edit.json: "sdedit_edit_accuracy", ...
METHOD_PREFIX = {"editor": "", "sdedit": "sdedit_", "identity": "identity_", "seen_phrasing": "seen_phrasing_",
                 "dataset": "dataset_"}


# ---------------------------------------------------------------------------------------
# Editing: the editor's dual-guidance sampler, and SDEdit as the baseline
# ---------------------------------------------------------------------------------------
def edit_batch(editor, images: Sequence[Image.Image], instructions: Sequence[str], steps: int,
               text_guidance: float, image_guidance: float, seed: int, batch_size: int = 8,
               seeds: Sequence[int] | None = None, scheduler: str = DEFAULT_SCHEDULER) -> list[Image.Image]:
    """Edit images with an InstructPix2Pix editor (an Editor or an in-memory pipeline)."""
    seeds = list(seeds) if seeds is not None else [seed_from(seed, i) for i in range(len(images))]
    settings = EditSettings(text_guidance=text_guidance, image_guidance=image_guidance, steps=steps,
                            seed=seed, batch_size=batch_size, scheduler=scheduler)
    return edit_images(editor, list(images), list(instructions), settings, seeds=seeds)


def load_sdedit(base_model: str, device: torch.device, scheduler: str = DEFAULT_SCHEDULER):
    """SDEdit = Stable Diffusion img2img on the editor's base model, with the editor's sampler."""
    from diffusers import StableDiffusionImg2ImgPipeline

    from datagen.shapes.models import resolve_model

    # float32 on every part: a checkpoint saved in fp16 (ours) would otherwise load with an fp16
    # text encoder beside an fp32 VAE and fail in img2img's encode.
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
        resolve_model(base_model, "t2i"), torch_dtype=torch.float32, safety_checker=None,
        requires_safety_checker=False)
    pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def sdedit_batch(pipe, images: Sequence[Image.Image], captions: Sequence[str], strength: float, steps: int,
                 guidance: float, seeds: Sequence[int], batch_size: int = 8) -> list[Image.Image]:
    out: list[Image.Image] = []
    for k in range(0, len(images), batch_size):
        chunk = list(images[k : k + batch_size])
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[k : k + batch_size]]
        result = pipe(prompt=list(captions[k : k + batch_size]), image=chunk, strength=strength,
                      num_inference_steps=steps, guidance_scale=guidance, generator=gens).images
        out.extend(r if r.size == im.size else r.resize(im.size, Image.LANCZOS) for r, im in zip(result, chunk))
    return out


# ---------------------------------------------------------------------------------------
# CLIP metrics (pure functions of features)
# ---------------------------------------------------------------------------------------
def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def clip_image_similarity(img_in: torch.Tensor, img_out: torch.Tensor) -> torch.Tensor:
    """cos(img_in, img_out) per row: how much of the input survives the edit."""
    return (_unit(img_in) * _unit(img_out)).sum(-1)


def clip_directional_similarity(img_in, img_out, txt_in, txt_out) -> torch.Tensor:
    """cos(img_out - img_in, txt_out - txt_in) per row, on unit features: does the change follow the text."""
    d_img = _unit(img_out) - _unit(img_in)
    d_txt = _unit(txt_out) - _unit(txt_in)
    return (_unit(d_img) * _unit(d_txt)).sum(-1)


class ClipFeatures:
    """An open_clip model loaded the normal way: built-in name + pretrained tag, hf-hub:, local-dir:."""

    def __init__(self, name: str, pretrained: str = "", device: torch.device | str = "cpu"):
        import open_clip

        from datagen.shapes.models import resolve_model

        if name == "shapes":
            name, pretrained = "local-dir:" + resolve_model("shapes", "clip"), ""
        try:
            model, _, self.preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained or None)
        except Exception as e:
            raise RuntimeError(f"cannot load CLIP {name!r} (pretrained {pretrained!r}) with open_clip: {e}") from e
        self.model = model.to(device).eval()
        self.tokenizer = open_clip.get_tokenizer(name)
        self.device = torch.device(device)

    @torch.no_grad()
    def images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        x = torch.stack([self.preprocess(im) for im in images]).to(self.device)
        return self.model.encode_image(x).float().cpu()

    @torch.no_grad()
    def texts(self, texts: Sequence[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(list(texts)).to(self.device)).float().cpu()


# ---------------------------------------------------------------------------------------
# The guidance sweep (paper figure)
# ---------------------------------------------------------------------------------------
@dataclass
class SweepPoint:
    setting: float                  # image guidance scale (editor) or strength (SDEdit)
    clip_directional_similarity: float
    clip_image_similarity: float


def _point(clip: ClipFeatures, setting: float, f_in, t_in, t_out, outputs) -> SweepPoint:
    f_out = clip.images(outputs)
    return SweepPoint(setting, clip_directional_similarity(f_in, f_out, t_in, t_out).mean().item(),
                      clip_image_similarity(f_in, f_out).mean().item())


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
    from model.data import DataError, load_examples
    from model.loading import load_editor, resolve_device

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
    clip = ClipFeatures(cfg.clip_model, cfg.clip_pretrained, dev)

    size = editor.native_resolution
    inputs = [ex.input_image.resize((size, size), Image.BICUBIC) for ex in examples]
    seeds = [seed_from(cfg.seed, ex.key) for ex in examples]
    f_in = clip.images(inputs)
    t_in = clip.texts([ex.input_caption for ex in examples])
    t_out = clip.texts([ex.output_caption for ex in examples])
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


# ---------------------------------------------------------------------------------------
# The shapes-world oracle
# ---------------------------------------------------------------------------------------
# Two disjoint sets of held-out scenes: "test" reports, "validation" is where settings are chosen
# (`editsynth edit-config`) without looking at the test scenes. Both from negative seeds: training
# data uses seeds >= 0.
ORACLE_SCENE_SETS = {"test": -1, "validation": -1_000_001}


def heldout_triples(n: int, seed: int = 0, scenes: str = "test"):
    """``n`` held-out triples balanced over edit kinds, from negative seeds (training uses >= 0)."""
    from datagen.shapes import grammar

    if scenes not in ORACLE_SCENE_SETS:
        raise ValueError(f"unknown held-out scenes {scenes!r}; use {' or '.join(ORACLE_SCENE_SETS)}")
    rng = random.Random(ORACLE_SCENE_SETS[scenes] - seed)
    kinds = grammar.EDIT_KINDS
    return [grammar.sample_triple(rng, kind=kinds[i % len(kinds)], held_out=True) for i in range(n)]


def seen_phrasings(triples, seed: int = 0) -> list[str]:
    """The same edits as ``triples``, phrased only with phrasings that training data uses."""
    from datagen.shapes import grammar

    rng = random.Random(seed_from(seed, "seen_phrasing"))
    return [grammar.instruction(t.input_scene, t.edit, rng, held_out=False) for t in triples]


def _rates(judgements: list, idx: list[int]) -> tuple[float, float]:
    if not idx:
        return 0.0, 0.0
    return (sum(judgements[i].edit_ok for i in idx) / len(idx),
            sum(judgements[i].preserved for i in idx) / len(idx))


def scene_verdicts(judgements: list) -> dict[str, str]:
    """Each scene's verdicts, one character a scene ("1" yes, "0" no): the edit made, the rest kept.
    Two evals of the same scenes can then be compared scene by scene (``compare_oracle``)."""
    return {"edit": "".join("1" if j.edit_ok else "0" for j in judgements),
            "kept": "".join("1" if j.preserved else "0" for j in judgements)}


def oracle_summary(kinds: list[str], judged: dict[str, list]) -> dict:
    """Edit accuracy and preservation overall and per edit kind, for each method judged; each
    scene's verdicts under ``by_scene``."""
    by_kind_idx: dict[str, list[int]] = defaultdict(list)
    for i, k in enumerate(kinds):
        by_kind_idx[k].append(i)
    result: dict = {"num_scenes": len(kinds)}
    by_kind: dict = {k: {"n": len(ix)} for k, ix in sorted(by_kind_idx.items())}
    for method, judgements in judged.items():
        p = METHOD_PREFIX[method]
        acc, pres = _rates(judgements, list(range(len(kinds))))
        result[f"{p}edit_accuracy"], result[f"{p}preservation"] = acc, pres
        result[f"{p}edit_correct"] = sum(j.edit_ok and j.preserved for j in judgements) / max(1, len(kinds))
        for k, ix in by_kind_idx.items():
            acc, pres = _rates(judgements, ix)
            by_kind[k][f"{p}edit_accuracy"], by_kind[k][f"{p}preservation"] = acc, pres
    result["by_edit_kind"] = by_kind
    result["by_scene"] = {method: scene_verdicts(judgements) for method, judgements in judged.items()}
    return result


def oracle_sweep_points(cfg: EvalConfig) -> list[tuple[float, float]]:
    """(s_T, s_I) settings the oracle eval also judges: each image scale of the sweep at each text
    scale of its own sweep (default: just the headline text scale)."""
    texts = cfg.oracle_text_guidance_sweep or [cfg.oracle_text_guidance]
    return [(s_text, s_img) for s_text in texts for s_img in cfg.oracle_image_guidance_sweep]


class NotAnOracleEval(ValueError):
    """Result ``index`` of a comparison is not the JSON of an oracle eval."""

    def __init__(self, index: int, why: Exception):
        super().__init__(f"result {index + 1} is not an oracle eval ({type(why).__name__}: {why})")
        self.index, self.why = index, why


def _oracle_rows(r: dict) -> tuple[dict, dict, list[float], int]:
    """One oracle eval as (guidance settings, other rows), each {label: ((edit, kept, both) or None,
    per-scene verdicts or None)}, its sweep's "both" and its number of scenes."""
    def row(d: dict, method: str = "editor"):
        keys = [METHOD_PREFIX[method] + k for k in ORACLE_RATES]
        rates = tuple(d[k] for k in keys) if all(k in d for k in keys) else None
        return rates, d.get("by_scene", {}).get(method)   # evals before by_scene: no verdicts

    def setting(d: dict) -> str:
        return f"s_T {d.get('text_guidance_scale', r['text_guidance_scale']):g} / s_I {d['image_guidance_scale']:g}"

    sweep = r.get("image_guidance_sweep", [])
    settings = {setting(r): row(r)}                               # the headline first
    for point in sweep:
        settings.setdefault(setting(point), row(point))
    others = {"worded as in training (headline setting)": row(r, "seen_phrasing"),
              f"SDEdit (strength {r.get('sdedit_strength')})": row(r, "sdedit"),
              "the pairs' own edited images": row(r, "dataset")}   # oracle_pairs.json
    return settings, others, [p["edit_correct"] for p in sweep], r["num_scenes"]


def sign_test(gained: int, lost: int) -> float:
    """Exact two-sided sign test: how likely a split at least this uneven of the scenes that changed
    verdict is, were either editor as likely to win each (McNemar's exact test)."""
    from scipy.stats import binomtest

    return binomtest(gained, gained + lost, 0.5).pvalue if gained + lost else 1.0


def paired_change(first: dict | None, other: dict | None) -> dict | None:
    """Scene by scene from ``first`` to ``other`` (``scene_verdicts`` of the same scenes): for the edit,
    the keeping and both, the scenes gained and lost and the sign test's p; None without verdicts."""
    if not first or not other or len(first["edit"]) != len(other["edit"]):
        return None

    def flags(verdicts: dict) -> dict[str, list[bool]]:
        edit, kept = [c == "1" for c in verdicts["edit"]], [c == "1" for c in verdicts["kept"]]
        return {"edit": edit, "kept": kept, "both": [e and k for e, k in zip(edit, kept)]}

    a, b = flags(first), flags(other)
    change = {}
    for name in ("edit", "kept", "both"):
        gained = sum(y and not x for x, y in zip(a[name], b[name]))
        lost = sum(x and not y for x, y in zip(a[name], b[name]))
        change[name] = {"gained": gained, "lost": lost, "p": sign_test(gained, lost)}
    return change


def _same_scenes(a: dict, b: dict) -> bool:
    """Whether two oracle evals judged the same scenes (held-out ones, or the same dataset's pairs)."""
    return (all(a.get(k) == b.get(k) for k in ("num_scenes", "seed", "data", "split"))
            and a.get("scenes", "test") == b.get("scenes", "test"))   # evals before "scenes": test


def compare_oracle(results: Sequence[dict]) -> dict:
    """Several oracle_edit.json (or oracle_pairs.json) side by side: ``rows`` of (setting, [(edit,
    kept, both) or None per result]) for every guidance setting any of them judged, then the same
    edits worded as in training, SDEdit, the pairs' own images; ``mean_both`` over each one's
    sweep; ``standard_error``, the largest of a rate judged on that many scenes (at 0.5), to read
    the differences against; ``paired``, per row, each later result against the first scene by
    scene (``paired_change``; None where either has no verdicts or the scenes differ), which sees
    through the noise the two share. A result that is no oracle eval raises NotAnOracleEval."""
    parsed = []
    for i, r in enumerate(results):
        try:
            parsed.append(_oracle_rows(r))
        except (KeyError, TypeError, AttributeError) as e:
            raise NotAnOracleEval(i, e) from e
    labels = list(dict.fromkeys(k for settings, *_ in parsed for k in settings))
    labels += dict.fromkeys(k for _, others, *_ in parsed for k in others)
    cells = [{**settings, **others} for settings, others, *_ in parsed]
    table = [(label, [c.get(label, (None, None)) for c in cells]) for label in labels]
    table = [(label, row) for label, row in table if any(rates for rates, _ in row)]
    same = [_same_scenes(results[0], r) for r in results]
    return {
        "rows": [(label, [rates for rates, _ in row]) for label, row in table],
        "mean_both": [sum(sweep) / len(sweep) if sweep else None for *_, sweep, _ in parsed],
        "standard_error": 0.5 / min(n for *_, n in parsed) ** 0.5,
        "paired": [(label, [None] + [paired_change(row[0][1], verdicts) if same[i] else None
                                     for i, (_, verdicts) in enumerate(row[1:], start=1)])
                   for label, row in table],
    }


# What evals must share for their sweeps to be pooled: the same editor judged on the same scenes alike.
POOLED_ALIKE = ("editor", "num_scenes", "seed", "steps", "scheduler")


class NotForChoosing(ValueError):
    """An oracle eval that settings must not be chosen on (test scenes, or no sweep)."""


def choose_guidance(results: Sequence[dict]) -> dict:
    """The (s_T, s_I) of the oracle evals' sweeps that makes the most edits while keeping everything
    else ("both"; ties: more edits, then more kept), and SDEdit's best strength likewise when it was
    swept. Several evals of the same editor and scenes pool their sweeps (a grid widened where its
    best lay on the edge). Only on validation scenes: a setting chosen on the test scenes would
    flatter them."""
    if any(r.get("scenes", "test") != "validation" for r in results):
        raise NotForChoosing("this eval judged the test scenes; choose on the validation scenes "
                             "(`editsynth eval --oracle --set train.eval.oracle_scenes=validation ...`)")
    if any(r.get(k) != results[0].get(k) for r in results for k in POOLED_ALIKE):
        raise NotForChoosing(f"these evals differ in {' or '.join(POOLED_ALIKE)}: their sweeps cannot be pooled")
    points = [p for r in results for p in r.get("image_guidance_sweep") or []]
    if not points:
        raise NotForChoosing("this eval has no guidance sweep to choose from "
                             "(--set train.eval.oracle_image_guidance_sweep=[...])")
    rank = lambda p: tuple(p[k] for k in ("edit_correct", "edit_accuracy", "preservation"))  # noqa: E731
    best = max(points, key=rank)
    chosen = {"text_guidance": best["text_guidance_scale"], "image_guidance": best["image_guidance_scale"],
              "validation": {k: best[k] for k in ORACLE_RATES},
              "judged": {k: results[0].get(k) for k in ("scenes", *POOLED_ALIKE)}}
    sdedit = [p for r in results for p in r.get("sdedit_strength_sweep") or []]
    if sdedit:
        best_sd = max(sdedit, key=rank)
        chosen["sdedit_strength"] = best_sd["sdedit_strength"]
        chosen["sdedit_validation"] = {k: best_sd[k] for k in ORACLE_RATES}
    return chosen


def evaluate_oracle(editor_model: str, cfg: EvalConfig, out: str | Path, base_model: str | None,
                    device: str = "auto", image_size: int = 64) -> dict:
    """Edit held-out rendered scenes; the oracle judges editor, SDEdit and identity -> oracle_edit.json."""
    from datagen.shapes import oracle, world
    from model.loading import load_editor, resolve_device

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    triples = heldout_triples(cfg.oracle_num_scenes, cfg.seed, cfg.oracle_scenes)
    tag = "" if cfg.oracle_scenes == "test" else cfg.oracle_scenes   # the test scenes keep their old seeds
    inputs = [world.render(t.input_scene, size=image_size, seed=seed_from(cfg.seed, tag + "render", i))
              for i, t in enumerate(triples)]
    seeds = [seed_from(cfg.seed, tag + "edit", i) for i in range(len(triples))]
    kinds = [t.edit_kind for t in triples]
    dev = resolve_device(device)

    def judge(outputs):
        return [oracle.judge_pair(before, after, t.input_caption, t.output_caption)
                for before, after, t in zip(inputs, outputs, triples)]

    editor = load_editor(editor_model, device=device)
    cfg, guidance_from = with_headline_guidance(cfg, editor)
    instructions = [t.instruction for t in triples]
    edited, edited_judged, sweep = _edit_and_judge(editor, inputs, instructions, seeds, kinds, judge, cfg)
    headline = (cfg.oracle_text_guidance, cfg.oracle_image_guidance)
    judged = {"editor": edited_judged, "identity": judge(inputs)}
    if cfg.oracle_seen_phrasing:  # the headline setting again, the edits worded as in training
        judged["seen_phrasing"] = judge(edit_batch(editor, inputs, seen_phrasings(triples, cfg.seed), cfg.steps,
                                                   *headline, cfg.seed, cfg.batch_size, seeds, cfg.scheduler))
    del editor
    sdedit_sweep = []
    if base_model:
        sdedit = load_sdedit(base_model, dev, cfg.scheduler)
        captions = [t.output_caption for t in triples]
        for strength in dict.fromkeys([cfg.oracle_sdedit_strength, *cfg.oracle_sdedit_strength_sweep]):
            judged_at = judge(sdedit_batch(sdedit, inputs, captions, strength, cfg.steps,
                                           cfg.text_guidance_scale, seeds, cfg.batch_size))
            if strength == cfg.oracle_sdedit_strength:
                judged["sdedit"] = judged_at
            if cfg.oracle_sdedit_strength_sweep:
                point = oracle_summary(kinds, {"sdedit": judged_at})
                sdedit_sweep.append({"sdedit_strength": strength,
                                     **{k: point["sdedit_" + k] for k in ORACLE_RATES}})
    result = oracle_summary(kinds, judged)
    result.update({
        "editor": editor_model, "base_model": base_model, "image_size": image_size, "steps": cfg.steps,
        "scheduler": cfg.scheduler,
        "text_guidance_scale": cfg.oracle_text_guidance, "image_guidance_scale": cfg.oracle_image_guidance,
        "guidance_from": guidance_from, "sdedit_strength": cfg.oracle_sdedit_strength, "seed": cfg.seed,
        "scenes": cfg.oracle_scenes, "device": str(dev), "seconds": round(time.time() - started, 2),
    })
    if sweep:
        result["image_guidance_sweep"] = sweep
    if sdedit_sweep:
        result["sdedit_strength_sweep"] = sdedit_sweep
    _save_oracle_grid(inputs, edited, triples, out / "oracle_examples.png")
    (out / ORACLE_FILE).write_text(json.dumps(result, indent=1))
    return result


def with_headline_guidance(cfg: EvalConfig, editor) -> tuple[EvalConfig, str]:
    """``cfg`` with the headline scales it leaves open filled in from the editor's edit_config.json,
    else from the paper; and where they came from ("config", "edit_config.json" or "paper")."""
    keys = {"text_guidance": "oracle_text_guidance", "image_guidance": "oracle_image_guidance"}
    open_keys = [k for k, c in keys.items() if getattr(cfg, c) is None]
    if not open_keys:
        return cfg, "config"
    resolved = EditSettings().for_editor(editor)
    source = "edit_config.json" if any(k in editor.edit_defaults for k in open_keys) else "paper"
    return cfg.model_copy(update={keys[k]: getattr(resolved, k) for k in open_keys}), source


def _edit_and_judge(editor, inputs, instructions, seeds, kinds, judge, cfg: EvalConfig):
    """Edit at the headline (s_T, s_I), then at every other sweep point; judge each with ``judge``.
    Returns the headline edits, their judgements, and the sweep's summary rows."""
    headline = (cfg.oracle_text_guidance, cfg.oracle_image_guidance)
    edited = edit_batch(editor, inputs, instructions, cfg.steps, *headline, cfg.seed, cfg.batch_size, seeds,
                        cfg.scheduler)
    edited_judged = judge(edited)
    sweep = []
    for s_text, s_img in oracle_sweep_points(cfg):
        judged_at = edited_judged if (s_text, s_img) == headline else judge(edit_batch(
            editor, inputs, instructions, cfg.steps, s_text, s_img, cfg.seed, cfg.batch_size, seeds, cfg.scheduler))
        point = oracle_summary(kinds, {"editor": judged_at})
        rates = {k: point[k] for k in ORACLE_RATES}
        sweep.append({"text_guidance_scale": s_text, "image_guidance_scale": s_img, **rates,
                      "by_scene": point["by_scene"]})
        log.info("oracle s_T=%.2f s_I=%.2f: %s", s_text, s_img, rates)   # the rates, not 2 x 210 verdicts
    return edited, edited_judged, sweep


def evaluate_oracle_pairs(editor_model: str, data: str, split: str, cfg: EvalConfig, out: str | Path,
                          device: str = "auto") -> dict:
    """Edit a shapes dataset's own pairs (its generated 'before' images, its instructions) and let the
    oracle judge them -> oracle_pairs.json. On the train split against a held-out one this measures
    how much the editor has learnt its training pairs by heart; the ``dataset_*`` keys judge the
    pairs' own edited images, the ceiling the data sets."""
    from datagen.shapes import oracle
    from model.data import DataError, load_examples
    from model.loading import load_editor, resolve_device

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    examples = load_examples(data, split, cfg.oracle_num_scenes, cfg.seed)
    missing = [e.key for e in examples if not (e.input_caption and e.output_caption)]
    if missing:
        raise DataError(f"{data!r} split {split!r}: the oracle needs input_caption and output_caption; "
                        f"{len(missing)} pairs lack them (first: {missing[0]!r})")
    inputs = [e.input_image.convert("RGB") for e in examples]
    seeds = [seed_from(cfg.seed, "edit", i) for i in range(len(examples))]
    kinds = [e.edit_kind or "unknown" for e in examples]

    def judge(outputs):
        return [oracle.judge_pair(before, after, e.input_caption, e.output_caption)
                for before, after, e in zip(inputs, outputs, examples)]

    editor = load_editor(editor_model, device=device)
    cfg, guidance_from = with_headline_guidance(cfg, editor)
    _, edited_judged, sweep = _edit_and_judge(editor, inputs, [e.instruction for e in examples],
                                              seeds, kinds, judge, cfg)
    del editor
    result = oracle_summary(kinds, {"editor": edited_judged,
                                    "dataset": judge([e.edited_image.convert("RGB") for e in examples])})
    result.update({
        "editor": editor_model, "data": data, "split": split, "steps": cfg.steps, "scheduler": cfg.scheduler,
        "text_guidance_scale": cfg.oracle_text_guidance, "image_guidance_scale": cfg.oracle_image_guidance,
        "guidance_from": guidance_from, "seed": cfg.seed, "device": str(resolve_device(device)),
        "seconds": round(time.time() - started, 2),
    })
    if sweep:
        result["image_guidance_sweep"] = sweep
    (out / PAIRS_ORACLE_FILE).write_text(json.dumps(result, indent=1))
    return result


def _save_oracle_grid(inputs, edited, triples, path: Path, per_kind: int = 2) -> None:
    """A few before/after pairs per edit kind, to look at beside the numbers."""
    shown: dict[str, int] = defaultdict(int)
    rows = []
    for before, after, t in zip(inputs, edited, triples):
        if shown[t.edit_kind] < per_kind:
            shown[t.edit_kind] += 1
            rows.append((before, after))
    if not rows:
        return
    w, h = rows[0][0].size
    grid = Image.new("RGB", (2 * w, h * len(rows)), "white")
    for i, (a, b) in enumerate(rows):
        grid.paste(a, (0, i * h))
        grid.paste(b.resize((w, h)), (w, i * h))
    grid.save(path)


def base_model_of(editor_model: str, fallback: str) -> str:
    """The base an editor was trained from (its editsynth_train.json), else ``fallback``."""
    from datagen.shapes.models import resolve_model

    try:
        info = Path(resolve_model(editor_model, "editor")) / "editsynth_train.json"
    except FileNotFoundError:
        return fallback
    if info.exists():
        from model.train import sd_base_model

        # An editor retrained from an editor: SDEdit needs the Stable Diffusion at the chain's root.
        return sd_base_model(json.loads(info.read_text()), fallback)
    return fallback
