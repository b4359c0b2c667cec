"""Re-select pairs from stored scores with new thresholds: seconds, no GPU, no images read.

``editsynth refilter --run R --set filter.min_direction=0.25`` reads every filter shard's
scores, applies the thresholds and top-k of the (overridden) config, and rewrites
``filter/selection.parquet`` + ``selection.json``. Candidates selected now but outside the
keep bound of the original run have no stored images; they are counted (re-render them with
``editsynth render-one``), and the export skips them.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from datagen.config import ConfigError, PipelineConfig, load_run_config
from datagen.store import RunStore

from .selection import Thresholds, passes, selection_table
from .table import RunError, read_scores, read_selection_info, write_selection

log = logging.getLogger(__name__)

# Settings refilter can change: the keep bound was applied when images were stored.
_REFILTER_KEYS = ("filter.min_sim_0", "filter.min_sim_1", "filter.min_direction", "filter.min_image",
                  "filter.max_pairs_per_triple")


def reselect(cfg: PipelineConfig, store: RunStore, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Select pairs from all stored scores with ``cfg.filter``; write and return the summary."""
    t0 = time.time()
    scores = read_scores(store, columns=["candidate_id", "triple_id", "status", "sim_0", "sim_1", "sim_image",
                                         "sim_direction", "images_kept"])
    t = Thresholds.from_config(cfg.filter)
    k = cfg.filter.max_pairs_per_triple
    selection = selection_table(scores, t, k, extra=("shard", "images_kept"))
    info = {
        "thresholds": t.as_dict(),
        "max_pairs_per_triple": k,
        "keep_bound": Thresholds.keep_bound(cfg.filter).as_dict(),
        "overrides": list(overrides),
        "candidates": int(len(scores)),
        "scored": int((scores["status"] == "ok").sum()),
        "passing": int(passes(scores, t).sum()),
        "selected": int(len(selection)),
        "triples": int(scores["triple_id"].nunique()),
        "triples_with_pairs": int(selection["triple_id"].nunique()),
        "selected_without_images": int((~selection["images_kept"].astype(bool)).sum()),
    }
    write_selection(store, selection, info)
    info["seconds"] = round(time.time() - t0, 3)
    if info["selected_without_images"]:
        log.warning("%d selected candidate(s) lie outside the keep bound %s, so their images were not stored; "
                    "the export skips them (re-render with `editsynth render-one`)",
                    info["selected_without_images"], info["keep_bound"])
    return info


def refilter(run: str | Path, overrides: list[str] | tuple[str, ...] = (), export: bool = False,
             reset: bool = False) -> dict:
    """Re-select a finished run with overridden thresholds; optionally re-export.

    Overrides apply on top of the current selection's thresholds (successive refilters
    compose), or on top of the run's config with ``reset``.
    """
    bad = [o for o in overrides if o.split("=", 1)[0].strip() not in _REFILTER_KEYS
           and not o.startswith("export.")]
    if bad:
        raise ConfigError(f"refilter can change only {', '.join(_REFILTER_KEYS)} and export.*; got {bad} "
                          "(the keep bound and the CLIP model were applied when the run was scored: "
                          "re-run the filter stage to change them)")
    store = RunStore(run)
    if not store.done_shards("filter"):
        raise RunError(f"{store.root}/filter has no done shards: run the filter stage first")
    previous = read_selection_info(store)
    base = [] if reset else [f"filter.{k}={v}" for k, v in previous.get("thresholds", {}).items()]
    if "max_pairs_per_triple" in previous and not reset:
        base.append(f"filter.max_pairs_per_triple={previous['max_pairs_per_triple']}")
    cfg = load_run_config(run, [*base, *overrides])
    history = [] if reset else previous.get("overrides", [])
    info = reselect(cfg, store, [*history, *overrides])
    info["previous_selected"] = previous.get("selected")
    if export:
        from .export import export_run

        info["export"] = export_run(cfg, store)
    return info
