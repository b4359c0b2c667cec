"""Shapes-world measurements for a finished run: the evidence that each stage adds value.

- p2p_modes: the share of oracle-correct pairs when the same triples and seeds are rendered with
  Prompt-to-Prompt `self` sharing, `cross` attention control, and no sharing at all (`none`:
  two independent generations from the same seed); p2p_modes_full: correct with what the
  captions leave unsaid (untouched objects' heights and offsets) kept too, where sharing matters;
- t2i_caption_match_rate / clip_top1: the shipped models' own held-out oracle figures.
These join the filter's oracle figures in ``<run>/report/oracle.json``.
"""
from __future__ import annotations

import io
import json
import logging
from pathlib import Path

from PIL import Image

from datagen.config import load_run_config
from datagen.p2p.stage import image_stage
from datagen.records import Triple
from datagen.shapes import oracle
from datagen.shapes.grammar import try_parse_caption
from datagen.shapes.models import SHIPPED_CLIP, SHIPPED_T2I
from datagen.store import RunStore

log = logging.getLogger(__name__)
MODES = ("self", "cross", "none")


def _shapes_triples(store: RunStore, limit: int) -> list[Triple]:
    rows = [Triple.from_row(r) for r in store.read_stage("captions")]
    shapes = [t for t in rows if try_parse_caption(t.input_caption) and try_parse_caption(t.output_caption)]
    return shapes[:limit]


def compare_p2p_modes(run: str | Path, num_triples: int = 24, num_candidates: int = 4) -> dict:
    """Oracle pair correctness of the same triples and seeds rendered in each sharing mode."""
    from datagen.p2p.render import RenderCounters
    from datagen.p2p.stage import build_renderer, render_shard

    store = RunStore(run)
    triples = _shapes_triples(store, num_triples)
    if not triples:
        return {}
    cfg = load_run_config(run)
    rates, rates_full, by_kind, relative = {}, {}, {}, {"edit_ok": {}, "preserved": {}, "preserved_full": {}}
    for mode in MODES:
        render_cfg = cfg.render.model_copy(update={"mode": mode, "num_candidates": num_candidates})
        mode_cfg = cfg.model_copy(update={"render": render_cfg})
        renderer = build_renderer(mode_cfg)
        rendered = [r for chunk in render_shard(renderer, mode_cfg, triples, RenderCounters()) for r in chunk]
        judged, kinds = [], {}
        for r in rendered:
            c = r.candidate
            if c.status != "ok":
                judged.append(oracle.PairJudgement(False, False, False, False, False, False, False))
                continue
            before, after = (Image.open(io.BytesIO(r.images[f"{k}.{c.image_format}"])) for k in ("input", "edited"))
            j = oracle.judge_pair(before, after, c.input_caption, c.output_caption)
            judged.append(j)
            kinds.setdefault(c.edit_kind or "unknown", []).append(j.correct)
        n = max(1, len(judged))
        rates[mode] = round(sum(j.correct for j in judged) / n, 4)
        rates_full[mode] = round(sum(j.correct_full for j in judged) / n, 4)
        # Relative to the before image: did the instructed change happen, did the rest stay?
        # P2P's whole point is the second; these move long before exact correctness does.
        relative["edit_ok"][mode] = round(sum(j.edit_ok for j in judged) / n, 4)
        relative["preserved"][mode] = round(sum(j.preserved for j in judged) / n, 4)
        relative["preserved_full"][mode] = round(sum(j.preserved_full for j in judged) / n, 4)
        by_kind[mode] = {k: round(sum(v) / len(v), 4) for k, v in sorted(kinds.items())}
        log.info("p2p mode %s: %.3f of %d candidates oracle-correct (%.3f with un-named facts kept), %.3f preserved",
                 mode, rates[mode], len(judged), rates_full[mode], relative["preserved"][mode])
    return {"p2p_modes": rates, "p2p_modes_full": rates_full, "p2p_modes_edit_ok": relative["edit_ok"],
            "p2p_modes_preserved": relative["preserved"], "p2p_modes_preserved_full": relative["preserved_full"],
            "p2p_modes_by_edit_kind": by_kind,
            "p2p_modes_sample": {"triples": len(triples), "candidates_per_triple": num_candidates}}


def _stored_samples(store: RunStore):
    """(shard, key, sample, candidate row) of every stored candidate: the render tar's, or where the
    render stage scored inline (render.store=kept), the filter tar's (the candidates inside the keep bound)."""
    for shard in store.done_shards("render"):
        if image_stage(store, shard) == "render":
            for key, sample in store.read_tar("render", shard).items():
                yield shard, key, sample, json.loads(sample["json"])
        elif store.is_done("filter", shard):
            rows = {r["candidate_id"]: r for r in store.read_table("filter", shard)}
            for key, sample in store.read_tar("filter", shard).items():
                yield shard, key, sample, rows[key]


def rendered_agreement(run: str | Path, limit: int = 200) -> dict:
    """How well the run's rendered images show their captions, attribute by attribute.

    Judged on the before images against input captions and after images against output
    captions of up to ``limit`` candidates: the text-to-image model's quality inside the run.
    """
    store = RunStore(run)
    rows: list[dict[str, bool]] = []
    for _shard, _key, sample, meta in _stored_samples(store):
        if not (try_parse_caption(meta["input_caption"]) and try_parse_caption(meta["output_caption"])):
            continue
        fmt = meta.get("image_format", "png")
        for part, cap in (("input", meta["input_caption"]), ("edited", meta["output_caption"])):
            rows.append(oracle.caption_agreement(Image.open(io.BytesIO(sample[f"{part}.{fmt}"])), cap))
        if len(rows) >= 2 * limit:
            break
    if not rows:
        return {}
    return {"rendered_caption_agreement": {k: round(sum(r[k] for r in rows) / len(rows), 4) for k in rows[0]},
            "rendered_images_judged": len(rows)}


def shipped_model_figures() -> dict:
    """The held-out oracle figures the trainers recorded for the shipped weights."""
    out = {}
    for folder, key, src in ((SHIPPED_T2I, "t2i_caption_match_rate", "ema_all"), (SHIPPED_CLIP, "clip_top1", "clip_top1")):
        state = folder / "train_state.json"
        if state.exists():
            out[key] = json.loads(state.read_text()).get(src)
    return out


def write_oracle_report(run: str | Path, compare_modes: bool = True, num_triples: int = 24,
                        num_candidates: int = 4) -> dict:
    """Add the shapes-world figures to ``<run>/report/oracle.json`` (keeping what is there)."""
    path = Path(run) / "report" / "oracle.json"
    report = json.loads(path.read_text()) if path.exists() else {}
    report.update(shipped_model_figures())
    report.update(rendered_agreement(run))
    if compare_modes:
        report.update(compare_p2p_modes(run, num_triples, num_candidates))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, sort_keys=True))
    return report



def layout_follows_seed(num_triples: int = 48, steps: int = 15, guidance: float = 4.5, seed: int = 40) -> dict:
    """Why P2P sharing can buy nothing here: render each triple's before image from its input
    caption and its after image from its output caption with no sharing at all, once with the same
    seed and once with another. Among oracle-correct pairs, the share whose untouched objects kept
    their un-named facts: if the same seed keeps them about as well as sharing does, the T2I lays
    objects out by the seed alone, and sharing has nothing left to keep."""
    import random

    import torch
    from diffusers import StableDiffusionPipeline

    from datagen.shapes import grammar

    pipe = StableDiffusionPipeline.from_pretrained(SHIPPED_T2I, torch_dtype=torch.float32, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    rng = random.Random(seed)
    triples = [grammar.sample_triple(rng) for _ in range(num_triples)]
    seeds = list(range(1000, 1000 + num_triples))

    def generate(captions, seeds_):
        return pipe(captions, num_inference_steps=steps, guidance_scale=guidance, height=64, width=64,
                    generator=[torch.Generator().manual_seed(s) for s in seeds_]).images

    before = generate([t.input_caption for t in triples], seeds)
    out = {"triples": num_triples}
    for name, after_seeds in (("same_seed", seeds), ("other_seed", [s + 7919 for s in seeds])):
        after = generate([t.output_caption for t in triples], after_seeds)
        judged = [oracle.judge_pair(b, a, t.input_caption, t.output_caption) for b, a, t in zip(before, after, triples)]
        correct = [j for j in judged if j.correct]
        out[name] = {"correct": len(correct),
                     "unnamed_kept_among_correct": round(sum(j.correct_full for j in correct) / max(1, len(correct)), 4)}
    return out
