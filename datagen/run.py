"""Run stages 1-3 of a pipeline over the run store, on Ray, resuming what is done.

A stage module (``datagen/<stage>/stage.py``) exposes:
  STAGE: str                                    the store folder name ("captions", ...)
  plan_shards(cfg, store) -> list[int]          every shard id the stage will write
  Worker(cfg, out)                              built once per Ray actor (loads models)
      .process_shard(shard) -> ShardStats       writes the shard's files, stats LAST
  preflight(cfg) -> None                        optional: run once before shards are sent (a probe)
  check_overwrite(cfg, store) -> None           optional: refuse --overwrite before anything is removed
  finalize(cfg, store) -> dict | None           optional: run once after all shards are done
Stages meet only through the store: stage N reads the shards stage N-1 marked done.

With ``render.store=kept`` (the default) one actor renders a shard and scores it as it renders
(``RenderAndScore``): the render stage then writes the filter shard too, storing only the images
inside the filter's keep bound, and the filter stage is left with selection and export.
"""
from __future__ import annotations

import importlib
import logging
import time
from functools import partial
from pathlib import Path

from .config import PipelineConfig, save_run_config
from .distribute import run_shards
from .store import RunStore

log = logging.getLogger(__name__)

STAGE_MODULES = {
    "captions": "datagen.captions.stage",
    "render": "datagen.p2p.stage",
    "filter": "datagen.filter.stage",
}
STAGE_ORDER = tuple(STAGE_MODULES)


def parse_stages(text: str) -> list[str]:
    stages = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGE_MODULES]
    if unknown or not stages:
        raise ValueError(f"--stages: unknown stage(s) {unknown or text!r}; choose from {','.join(STAGE_ORDER)}")
    return sorted(stages, key=STAGE_ORDER.index)


def _make_worker(module_name: str, cfg: PipelineConfig, out: str):
    return importlib.import_module(module_name).Worker(cfg, out)


class RenderAndScore:
    """One actor that renders and scores (``render.store=kept``): the render worker hands each
    chunk to the filter worker's scorer, so images outside the keep bound are never stored."""

    def __init__(self, cfg: PipelineConfig, out: str):
        self.filter = _make_worker(STAGE_MODULES["filter"], cfg, out)
        # Previews (render.preview) are scored with the filter's CLIP too.
        render = importlib.import_module(STAGE_MODULES["render"])
        self.render = render.Worker(cfg, out, preview_scorer=self.filter.scorer.score)

    def process_shard(self, shard: int):
        return self.render.process_shard(shard, scoring=partial(self.filter.scoring, scored_inline=True))


def preview_scorer(cfg: PipelineConfig, out: str | Path):
    """The filter's CLIP scorer, to score previews outside a run (render-one)."""
    return _make_worker(STAGE_MODULES["filter"], cfg, str(out)).scorer.score


def scores_inline(stage: str, cfg: PipelineConfig) -> bool:
    """The render stage scores as it renders with render.store=kept, and whenever waves or previews
    need scores mid-shard (with render.store=all it then also writes every image to a render tar)."""
    r = cfg.render
    return stage == "render" and (r.store == "kept" or r.waves is not None or r.preview is not None)


def run_stage(stage: str, cfg: PipelineConfig, out: str | Path, overwrite: bool = False) -> dict:
    """Run one stage to completion (skipping done shards) and return its summary."""
    module_name = STAGE_MODULES[stage]
    module = importlib.import_module(module_name)
    store = RunStore(out)
    inline = scores_inline(stage, cfg)
    if overwrite:
        if hasattr(module, "check_overwrite"):
            module.check_overwrite(cfg, store)
        store.clear_stage(module.STAGE)
        if inline:   # the filter shards are this stage's output too
            store.clear_stage(importlib.import_module(STAGE_MODULES["filter"]).STAGE)
    shards = module.plan_shards(cfg, store)
    todo = [s for s in shards if not store.is_done(module.STAGE, s)]
    log.info("stage %s: %d shard(s), %d done, %d to do", stage, len(shards), len(shards) - len(todo), len(todo))
    t0 = time.time()
    if todo and hasattr(module, "preflight"):
        module.preflight(cfg)
    if todo and inline:
        importlib.import_module(STAGE_MODULES["filter"]).check_filter_setup(cfg)
    resources = getattr(cfg, stage).resources
    make_worker = partial(RenderAndScore, cfg, str(out)) if inline else partial(_make_worker, module_name, cfg, str(out))
    run_shards(module.STAGE, make_worker, todo, resources, cfg.ray_address)
    summary = store.write_summary(module.STAGE)
    summary["wall_seconds"] = round(time.time() - t0, 3)
    if hasattr(module, "finalize"):
        summary["finalize"] = module.finalize(cfg, store)
    log.info("stage %s done: %s", stage, {k: summary[k] for k in ("shards", "count_in", "count_out")})
    return summary


def run_pipeline(cfg: PipelineConfig, out: str | Path, stages: list[str], overwrite: bool = False) -> dict:
    RunStore(out).prepare()
    save_run_config(cfg, out)
    summaries = {}
    for stage in stages:
        # render.store=kept: rendering with --overwrite has already started the filter shards over
        again = overwrite and not (stage == "filter" and "render" in stages and scores_inline("render", cfg))
        summaries[stage] = run_stage(stage, cfg, out, again)
    return summaries
