"""Re-select pairs from stored scores with new thresholds: seconds, no GPU, no images read.

``editsynth refilter --run R --set filter.min_direction=0.25`` applies the thresholds and top-k
of the (overridden) config to every filter shard's scores and rewrites
``filter/selection.parquet`` + ``selection.json``. The scores are queried where they lie
(score_query.py: DuckDB over the parquet files), never loaded whole: 45M candidates fit in 2 GB.
Candidates selected now but outside the keep bound of the original run have no stored images;
they are counted (re-render them with ``editsynth render-one``), and the export skips them.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import pyarrow.compute as pc

from datagen.config import ConfigError, FilterConfig, PipelineConfig, load_run_config
from datagen.store import RunStore

from .score_query import connect, counts, score_files, selection_arrow
from .selection import Thresholds
from .table import RunError, read_selection_info, write_selection

log = logging.getLogger(__name__)

# Settings refilter can change: the keep bound was applied when images were stored.
_REFILTER_KEYS = ("filter.min_sim_0", "filter.min_sim_1", "filter.min_direction", "filter.min_image",
                  "filter.max_pairs_per_triple")


def reselect(cfg: PipelineConfig, store: RunStore, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Select pairs from all stored scores with ``cfg.filter``; write and return the summary."""
    t0 = time.time()
    t = Thresholds.from_config(cfg.filter)
    k = cfg.filter.max_pairs_per_triple
    con = connect(score_files(store), store.filesystem)
    totals = counts(con, t)
    selection = selection_arrow(con, t, k, extra=("shard", "images_kept"))
    con.close()
    kept = pc.sum(selection["images_kept"]).as_py() or 0
    info = {
        "thresholds": t.as_dict(),
        "max_pairs_per_triple": k,
        "keep_bound": Thresholds.keep_bound(cfg.filter).as_dict(),
        "overrides": list(overrides),
        **{key: totals[key] for key in ("candidates", "scored", "passing")},
        "selected": selection.num_rows,
        "triples": totals["triples"],
        "triples_with_pairs": pc.count_distinct(selection["triple_id"]).as_py() if selection.num_rows else 0,
        "selected_without_images": selection.num_rows - int(kept),
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
        raise RunError(f"{store.url('filter')} has no done shards: run the filter stage first")
    previous = read_selection_info(store)
    cfg = load_run_config(run, overrides)
    if not reset:
        # The current selection's settings (as values) wherever this call does not set them.
        given = {o.split("=", 1)[0].strip() for o in overrides}
        current = {**previous.get("thresholds", {}),
                   **{k: previous[k] for k in ("max_pairs_per_triple",) if k in previous}}
        kept = {k: v for k, v in current.items() if f"filter.{k}" not in given}
        cfg.filter = FilterConfig.model_validate({**cfg.filter.model_dump(), **kept})
    history = [] if reset else previous.get("overrides", [])
    info = reselect(cfg, store, [*history, *overrides])
    info["previous_selected"] = previous.get("selected")
    if export:
        from .export import export_run

        info["export"] = export_run(cfg, store)
    return info
