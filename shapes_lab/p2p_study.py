"""The P2P study: do the sharing modes keep what captions leave unsaid, paired by seed?

The same grammar triples x seeds are rendered by the project's renderer (datagen/p2p) in
- ``self`` and ``cross`` at the run's drawn p, and ``none`` (no sharing, the same seed);
- ``self_p<p>``: self sharing at each fixed p of a sweep (rendered in one chunk with ``self``,
  so the candidates of one seed share its source branch);
- ``none_new_seed``: the before image of seed k beside the after image of seed k+1 of the same
  triple, both from ``none``: two truly independent generations, which is how a real model
  that moves its layout with the prompt behaves without sharing.
Every pair is judged by the oracle (correct, correct_full, preserved_full) and scored by the
filter's CLIP (sim_image). The report pairs the arms by (triple, seed) with an exact sign test
and asks how well sim_image separates pairs that keep un-named facts from those that lose them.
Rows are saved per render group beside the output (``<out>.parts/``), so a killed study resumes.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import random
import time
from pathlib import Path

from PIL import Image

from datagen.config import PipelineConfig
from datagen.records import CandidateSpec, Triple, candidate_id, stable_id
from datagen.shapes import grammar, oracle

from .paired_stats import auc, rate, sign_test, sweep_thresholds, threshold_sweep

log = logging.getLogger(__name__)

DEFAULT_P_SWEEP = (0.1, 0.3, 0.5, 0.7, 0.9)
MAIN_ARMS = ("self", "cross", "none")
JUDGED = ("correct", "correct_full", "preserved", "preserved_full", "edit_ok")
# The target: the better sharing mode keeps un-named facts in 0.15 more pairs than none.
TARGET_GAIN = 0.15


def study_triples(num_triples: int, seed: int) -> list[Triple]:
    """``num_triples`` grammar triples drawn from ``seed`` (the shapes run's kind of triple)."""
    rng = random.Random(seed)
    out = []
    for i in range(num_triples):
        t = grammar.sample_triple(rng)
        out.append(Triple(triple_id=stable_id("p2p-study", seed, i), input_caption=t.input_caption,
                          instruction=t.instruction, output_caption=t.output_caption, edit_kind=t.edit_kind,
                          backend="grammar", model=grammar.GRAMMAR_VERSION))
    return out


def arm_p(arm: str) -> float | None:
    """The fixed p of a sweep arm (``self_p0.3`` -> 0.3); None for the arms at the drawn p."""
    return float(arm.removeprefix("self_p")) if arm.startswith("self_p") else None


def group_arms(p_sweep) -> dict[str, list[str]]:
    """Render groups (one renderer mode each) and the arms each renders."""
    return {"none": ["none"], "cross": ["cross"], "self": ["self"] + [f"self_p{p:g}" for p in p_sweep]}


def new_seed_partners(keys: list[tuple[str, int]], num_seeds: int) -> list[tuple[int, int]]:
    """(i, j) for every row i of ``keys`` ((triple id, seed index)): j is the row of the same
    triple's next seed (k + 1 mod num_seeds), whose after image goes beside i's before image."""
    at = {key: i for i, key in enumerate(keys)}
    return [(i, at[(t, (k + 1) % num_seeds)]) for i, (t, k) in enumerate(keys)]


def group_specs(cfg: PipelineConfig, triples: list[Triple], num_seeds: int, arms: list[str],
                mode: str) -> list[tuple[str, int, CandidateSpec]]:
    """(arm, seed index, spec) of every candidate of a group, in triple, seed, arm order.

    Seed k of a triple draws (seed, cfg, p) as candidate k of a run would (specs.draw_spec), so
    every arm sees the same seed and guidance; only p differs between them.
    """
    from datagen.p2p.specs import draw_spec

    rc = cfg.render.model_copy(update={"mode": mode, "candidates_per_seed": 1})
    out = []
    for t in triples:
        for k in range(num_seeds):
            drawn = draw_spec(cfg.seed, t.triple_id, k, rc)
            for j, arm in enumerate(arms):
                index = k * len(arms) + j
                p = arm_p(arm)
                out.append((arm, k, dataclasses.replace(drawn, candidate_id=candidate_id(t.triple_id, index),
                                                        index=index, p=drawn.p if p is None else p)))
    return out


def _images(rendered) -> tuple[Image.Image, Image.Image]:
    c = rendered.candidate
    return tuple(Image.open(io.BytesIO(rendered.images[f"{k}.{c.image_format}"])).convert("RGB")
                 for k in ("input", "edited"))


def judge(rows: list[dict], pairs: list[tuple[Image.Image, Image.Image]], candidates, scorer) -> list[dict]:
    """Fill in the oracle's judgements and the filter's sim_image of each pair (None: failed)."""
    ok = [i for i, pair in enumerate(pairs) if pair is not None]
    scores = scorer.score([candidates[i] for i in ok], [pairs[i] for i in ok]) if ok else []
    sims = dict(zip(ok, scores))
    for i, row in enumerate(rows):
        if pairs[i] is None:
            row.update({name: False for name in JUDGED}, sim_image=None)
            continue
        c = candidates[i]
        j = oracle.judge_pair(*pairs[i], c.input_caption, c.output_caption)
        row.update({name: bool(getattr(j, name)) for name in JUDGED},
                   sim_image=round(sims[i].sim_image, 5), sim_direction=round(sims[i].sim_direction, 5))
    return rows


def render_group(cfg: PipelineConfig, triples: list[Triple], num_seeds: int, group: str, arms: list[str],
                 scorer) -> list[dict]:
    """Render one group and judge every pair: one row per (arm, triple, seed)."""
    from datagen.p2p.specs import chunk
    from datagen.p2p.stage import build_renderer

    renderer = build_renderer(cfg.model_copy(update={"render": cfg.render.model_copy(update={"mode": group})}))
    by_id = {t.triple_id: t for t in triples}
    specs = group_specs(cfg, triples, num_seeds, arms, group)
    # Whole triples per chunk: a seed's arms share its source branch only inside one chunk.
    per_triple = num_seeds * len(arms)
    size = per_triple * max(1, cfg.render.resources.batch_size // per_triple)
    rendered = {}
    t0 = time.perf_counter()
    for n, part in enumerate(chunk([s for _, _, s in specs], size)):
        for r in renderer.render_chunk(by_id, part):
            rendered[r.candidate.candidate_id] = r
        log.info("p2p-study %s: %d/%d candidates, %.0fs", group, min((n + 1) * size, len(specs)), len(specs),
                 time.perf_counter() - t0)
    rows, pairs, cands = [], [], []
    for arm, k, spec in specs:
        r = rendered[spec.candidate_id]
        rows.append({"arm": arm, "triple_id": spec.triple_id, "seed_index": k, "p": round(spec.p, 4),
                     "edit_kind": by_id[spec.triple_id].edit_kind})
        pairs.append(_images(r) if r.candidate.status == "ok" else None)
        cands.append(r.candidate)
    if group == "none":
        # Two independent generations: seed k's before image beside seed k+1's after image.
        for i, other in new_seed_partners([(row["triple_id"], row["seed_index"]) for row in rows], num_seeds):
            rows.append({**rows[i], "arm": "none_new_seed"})
            pairs.append(None if pairs[i] is None or pairs[other] is None else (pairs[i][0], pairs[other][1]))
            cands.append(cands[i])
    return judge(rows, pairs, cands, scorer)


def summarise(rows: list[dict], arms: list[str], fixed_thresholds=()) -> dict:
    """The study's figures from its rows (pure): rates per arm, sign tests paired by
    (triple, seed), and how sim_image separates pairs that keep un-named facts."""
    by_arm = {arm: [r for r in rows if r["arm"] == arm] for arm in arms}
    out: dict = {"arms": {}}
    for arm, rs in by_arm.items():
        figures = {name: rate([r[name] for r in rs]) for name in JUDGED}
        correct = [r for r in rs if r["correct"]]
        figures["unnamed_kept_among_correct"] = rate([r["correct_full"] for r in correct])
        kinds = sorted({r["edit_kind"] for r in rs})
        figures["correct_full_by_edit_kind"] = {k: rate([r["correct_full"] for r in rs if r["edit_kind"] == k])
                                                for k in kinds}
        out["arms"][arm] = {"pairs": len(rs), **figures}

    def outcome(arm: str, name: str) -> dict:
        return {(r["triple_id"], r["seed_index"]): r[name] for r in by_arm[arm]}

    tests = {}
    for a in [arm for arm in arms if arm not in ("none", "none_new_seed")]:
        for b in ("none", "none_new_seed"):
            if b in by_arm:
                tests[f"{a}_vs_{b}"] = {name: sign_test(outcome(a, name), outcome(b, name))
                                        for name in ("correct_full", "preserved_full")}
    out["sign_tests"] = tests

    # The filter: does a higher sim_image mean the un-named facts were kept? Over the run's arms.
    pooled = [r for r in rows if r["arm"] in MAIN_ARMS and r["sim_image"] is not None]
    sims = [r["sim_image"] for r in pooled]
    thresholds = sweep_thresholds(sims, fixed_thresholds)
    correct = [r for r in pooled if r["correct"]]
    out["filter_sim_image"] = {
        "pairs": len(pooled), "arms": list(MAIN_ARMS),
        "auc_preserved_full": auc(sims, [r["preserved_full"] for r in pooled]),
        "auc_correct_full_among_correct": auc([r["sim_image"] for r in correct], [r["correct_full"] for r in correct]),
        "auc_preserved_full_by_arm": {arm: auc([r["sim_image"] for r in by_arm[arm] if r["sim_image"] is not None],
                                               [r["preserved_full"] for r in by_arm[arm] if r["sim_image"] is not None])
                                      for arm in arms},
        "sweep_preserved_full": threshold_sweep(sims, [r["preserved_full"] for r in pooled], thresholds),
        "sweep_correct_full_among_correct": threshold_sweep([r["sim_image"] for r in correct],
                                                            [r["correct_full"] for r in correct], thresholds),
    }
    full = out["arms"]
    if all(arm in full for arm in MAIN_ARMS):
        best = max(full["self"]["correct_full"], full["cross"]["correct_full"])
        none = full["none"]
        out["target"] = {"best_sharing_minus_none_correct_full": round(best - none["correct_full"], 4),
                         "required": TARGET_GAIN,
                         "met": best - none["correct_full"] >= TARGET_GAIN,
                         # The most any arm as often correct as none could gain: every correct pair kept whole.
                         "ceiling_over_none": round(none["correct"] - none["correct_full"], 4)}
        if "none_new_seed" in full:
            out["target"]["best_sharing_minus_none_new_seed_correct_full"] = round(
                best - full["none_new_seed"]["correct_full"], 4)
    return out


def _parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def _load_part(path: Path, header: dict) -> dict | None:
    """A group's saved rows, or None when it must be rendered (no file, or other arms: a new
    sweep). Rows of other triples, seeds or models are refused rather than overwritten."""
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    saved = data.get("header", {})
    if saved == header:
        return data
    if {**saved, "arms": None} == {**header, "arms": None}:
        log.info("p2p-study: %s holds arms %s, not %s: rendering the group again", path, saved["arms"], header["arms"])
        return None
    raise ValueError(f"{path} was written by a study with other settings ({saved}, now {header}): "
                     f"remove {path.parent} or choose another --out")


def run_study(cfg: PipelineConfig, num_triples: int = 96, num_seeds: int = 4, p_sweep=DEFAULT_P_SWEEP,
              triple_seed: int = 0, out: str | Path | None = None) -> dict:
    """Render, judge and summarise the study; write ``out`` (JSON) when given."""
    from datagen.clip.loading import load_clip
    from datagen.filter.scorer import ClipScorer

    if num_triples < 1:
        raise ValueError(f"--triples must be at least 1, got {num_triples}")
    if num_seeds < 2:
        raise ValueError(f"--seeds must be at least 2 (none_new_seed pairs seed k with seed k+1), got {num_seeds}")
    bad = [p for p in p_sweep if not 0 < p <= 1]
    if bad:
        raise ValueError(f"every p of the sweep must lie in (0, 1]: {bad}")
    out = Path(out) if out is not None else None
    triples = study_triples(num_triples, triple_seed)
    f = cfg.filter
    scorer = ClipScorer(load_clip(f.clip_model, f.clip_pretrained, f.device, f.precision),
                        batch_size=f.resources.batch_size, preprocess=f.preprocess)
    header = {"triples": num_triples, "seeds": num_seeds, "triple_seed": triple_seed, "p_sweep": list(p_sweep),
              "render": cfg.render.model_dump(mode="json", exclude={"resources", "mode"}), "run_seed": cfg.seed,
              "clip": f.clip_model}
    rows, seconds = [], {}
    for group, arms in group_arms(p_sweep).items():
        part = _parts_dir(out) / f"{group}.json" if out else None
        # A group's rows depend on its own arms, not the others': a new sweep keeps none and cross.
        group_header = {**header, "p_sweep": None, "arms": arms}
        done = _load_part(part, group_header) if part else None
        if done is None:
            t0 = time.perf_counter()
            done = {"header": group_header, "rows": render_group(cfg, triples, num_seeds, group, arms, scorer),
                    "seconds": round(time.perf_counter() - t0, 1)}
            if part:
                part.parent.mkdir(parents=True, exist_ok=True)
                tmp = part.with_suffix(".tmp")
                tmp.write_text(json.dumps(done))
                tmp.replace(part)
        rows += done["rows"]
        seconds[group] = done.get("seconds")
    arms = [arm for arms in group_arms(p_sweep).values() for arm in arms]
    arms.insert(arms.index("none") + 1, "none_new_seed")
    report = {"settings": header, "seconds": seconds, **summarise(rows, arms, (f.min_image, f.keep_min_image))}
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1))
    return report
