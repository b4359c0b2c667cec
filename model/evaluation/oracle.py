"""Measure an editor exactly: the shapes-world oracle judges every edit.

``evaluate_oracle``: held-out RENDERED shapes-world scenes (negative seeds, never training
data), one held-out triple each, edited by the editor, by SDEdit and by nothing (identity);
the oracle judges whether the instructed change is visible (edit accuracy) and whether
everything else stayed (preservation), per edit kind -> ``oracle_edit.json``; the ``_full`` keys
count everything else as kept only when each untouched object's un-named facts (height, offset
within its slot: what the captions never say) stayed within the oracle's tolerance too. The held-out
instructions use phrasings no training triple has, built from words training texts contain
("take the circle away"); the same edits phrased as training data phrases them are judged too
(``seen_phrasing_*``), which separates following a new wording from making the edit. Edits with a
wording that has a word no training text has ("get rid of the circle") are judged apart, on the
scenes whose edit kind has one (``unseen_vocabulary_*``): a tiny text encoder trained on
shapes-world texts alone has no way to know that "get rid of" means "remove".

``evaluate_oracle_pairs``: the same judgement of a shapes dataset's own pairs.
"""
from __future__ import annotations

import json
import logging
import random
import time
from collections import defaultdict
from pathlib import Path

from PIL import Image

from datagen.config import EvalConfig
from datagen.records import seed_from
from datagen.shapes import grammar, oracle, world
from model.editor.loading import load_editor, resolve_device
from model.editor.sampling import EditSettings, edit_batch
from model.training.data import DataError, load_examples

from .results import METHOD_PREFIX, ORACLE_FILE, ORACLE_RATES, ORACLE_RATES_FULL, PAIRS_ORACLE_FILE
from .sdedit import load_sdedit, sdedit_batch

log = logging.getLogger(__name__)


# Two disjoint sets of held-out scenes: "test" reports, "validation" is where settings are chosen
# (`editsynth edit-config`) without looking at the test scenes. Both from negative seeds: training
# data uses seeds >= 0.
ORACLE_SCENE_SETS = {"test": -1, "validation": -1_000_001}


def heldout_triples(n: int, seed: int = 0, scenes: str = "test"):
    """``n`` held-out triples balanced over edit kinds, from negative seeds (training uses >= 0)."""
    if scenes not in ORACLE_SCENE_SETS:
        raise ValueError(f"unknown held-out scenes {scenes!r}; use {' or '.join(ORACLE_SCENE_SETS)}")
    rng = random.Random(ORACLE_SCENE_SETS[scenes] - seed)
    kinds = grammar.EDIT_KINDS
    return [grammar.sample_triple(rng, kind=kinds[i % len(kinds)], held_out=True) for i in range(n)]


def seen_phrasings(triples, seed: int = 0) -> list[str]:
    """The same edits as ``triples``, phrased only with phrasings that training data uses."""
    rng = random.Random(seed_from(seed, "seen_phrasing"))
    return [grammar.instruction(t.input_scene, t.edit, rng, held_out=False) for t in triples]


def unseen_vocabulary_phrasings(triples, seed: int = 0) -> dict[int, str]:
    """{scene index: the same edit phrased with a word no training text has}, for the scenes whose
    edit has such a phrasing (recolours, say, have none)."""
    rng = random.Random(seed_from(seed, "unseen_vocabulary"))
    return {i: grammar.instruction(t.input_scene, t.edit, rng, held_out="unseen_vocabulary")
            for i, t in enumerate(triples) if grammar.templates(grammar.instruction_key(t.edit), "unseen_vocabulary")}


def _rates(judgements: list, idx: list[int]) -> tuple[float, float, float]:
    """Edit made, rest kept, rest kept with its un-named facts: each a share of the scenes ``idx``."""
    if not idx:
        return 0.0, 0.0, 0.0
    return (sum(judgements[i].edit_ok for i in idx) / len(idx),
            sum(judgements[i].preserved for i in idx) / len(idx),
            sum(judgements[i].preserved_full for i in idx) / len(idx))


def scene_verdicts(judgements: list) -> dict[str, str]:
    """Each scene's verdicts, one character a scene ("1" yes, "0" no): the edit made, the rest kept,
    the rest kept with its un-named facts. Two evals of the same scenes can then be compared scene
    by scene (``compare_oracle``)."""
    return {"edit": "".join("1" if j.edit_ok else "0" for j in judgements),
            "kept": "".join("1" if j.preserved else "0" for j in judgements),
            "kept_full": "".join("1" if j.preserved_full else "0" for j in judgements)}


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
        acc, pres, pres_full = _rates(judgements, list(range(len(kinds))))
        result[f"{p}edit_accuracy"], result[f"{p}preservation"], result[f"{p}preservation_full"] = acc, pres, pres_full
        result[f"{p}edit_correct"] = sum(j.edit_ok and j.preserved for j in judgements) / max(1, len(kinds))
        result[f"{p}edit_correct_full"] = sum(j.edit_ok and j.preserved_full for j in judgements) / max(1, len(kinds))
        for k, ix in by_kind_idx.items():
            acc, pres, pres_full = _rates(judgements, ix)
            by_kind[k][f"{p}edit_accuracy"], by_kind[k][f"{p}preservation"] = acc, pres
            by_kind[k][f"{p}preservation_full"] = pres_full
    result["by_edit_kind"] = by_kind
    result["by_scene"] = {method: scene_verdicts(judgements) for method, judgements in judged.items()}
    return result


def oracle_sweep_points(cfg: EvalConfig) -> list[tuple[float, float]]:
    """(s_T, s_I) settings the oracle eval also judges: each image scale of the sweep at each text
    scale of its own sweep (default: just the headline text scale)."""
    texts = cfg.oracle_text_guidance_sweep or [cfg.oracle_text_guidance]
    return [(s_text, s_img) for s_text in texts for s_img in cfg.oracle_image_guidance_sweep]


def evaluate_oracle(editor_model: str, cfg: EvalConfig, out: str | Path, base_model: str | None,
                    device: str = "auto", image_size: int = 64) -> dict:
    """Edit held-out rendered scenes; the oracle judges editor, SDEdit and identity -> oracle_edit.json."""
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
    unseen = unseen_vocabulary_phrasings(triples, cfg.seed) if cfg.oracle_unseen_vocabulary else {}
    if unseen:   # the headline setting on those scenes alone
        idx = sorted(unseen)
        unseen_judged = [oracle.judge_pair(inputs[i], after, triples[i].input_caption, triples[i].output_caption)
                         for i, after in zip(idx, edit_batch(editor, [inputs[i] for i in idx], [unseen[i] for i in idx],
                                                             cfg.steps, *headline, cfg.seed, cfg.batch_size,
                                                             [seeds[i] for i in idx], cfg.scheduler))]
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
                                     **{k: point["sdedit_" + k] for k in ORACLE_RATES + ORACLE_RATES_FULL}})
    result = oracle_summary(kinds, judged)
    if unseen:
        apart = oracle_summary([kinds[i] for i in idx], {"unseen_vocabulary": unseen_judged})
        result.update({k: v for k, v in apart.items() if k.startswith("unseen_vocabulary_")})
        result["unseen_vocabulary_num_scenes"] = len(idx)
        result["by_scene"]["unseen_vocabulary"] = {"scenes": idx, **apart["by_scene"]["unseen_vocabulary"]}
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
        rates = {k: point[k] for k in ORACLE_RATES + ORACLE_RATES_FULL}
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
