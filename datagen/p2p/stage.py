"""Stage 2 on the run store: render shard i from the done captions shard i (datagen/run.py protocol).

Reads ``captions/captions-<i>.parquet`` (Triple rows) and writes
- ``render/render-<i>.tar``: webdataset samples ``<candidate_id>.input.<ext>``,
  ``<candidate_id>.edited.<ext>``, ``<candidate_id>.json`` (ok candidates only);
- ``render/render-<i>.parquet``: one Candidate row per candidate, failed ones included;
- ``render/render-<i>.stats.json`` LAST (the done marker): counts, failures, truncated
  captions, the triples not rendered by reason (captions alike to the text encoder:
  caption_guard.py), timings, the UNet rows the batching and sharing saved, and the bytes written.

Both files are written chunk by chunk as candidates are rendered: an actor holds the images of
one chunk (``render.resources.batch_size`` candidates), never those of a whole shard.

With ``render.store=kept`` (the default) the actor also scores each chunk as it is rendered
(datagen/run.py hands ``process_shard`` the filter stage's scorer): the tar is not written, the
filter shard holds the scores of every candidate and the images of those inside the keep bound,
each image written once. ``render.store=all`` also keeps every image in the render tar.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import Counter
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, ContextManager, Iterator

import pyarrow as pa

from datagen.config import PipelineConfig, load_run_config
from datagen.records import Candidate, ShardStats, Triple
from datagen.store import RunStore

from .caption_guard import REASONS as NOT_RENDERED_REASONS
from .loading import load_pipeline
from .render import CandidateRenderer, RenderCounters, RenderedCandidate
from .specs import chunk, shard_specs

log = logging.getLogger(__name__)

STAGE = "render"
INPUT_STAGE = "captions"

# Explicit, so that a shard whose candidates all failed or that has no triples still has columns.
_ARROW = {"str": pa.string(), "int": pa.int64(), "float": pa.float64()}
CANDIDATE_SCHEMA = pa.schema([(f.name, _ARROW[f.type]) for f in dataclasses.fields(Candidate)])


def plan_shards(cfg: PipelineConfig, store: RunStore) -> list[int]:
    """One render shard per done captions shard."""
    return store.done_shards(INPUT_STAGE)


def read_triples(store: RunStore, shard: int) -> list[Triple]:
    return [Triple.from_row(r) for r in store.read_table(INPUT_STAGE, shard)]


def set_cpu_threads(cfg: PipelineConfig, device) -> None:
    """CPU results depend on the thread count: fix it from the config so render-one matches."""
    import torch

    if device.type == "cpu":
        torch.set_num_threads(max(1, int(cfg.render.resources.num_cpus)))


def build_renderer(cfg: PipelineConfig) -> CandidateRenderer:
    rc = cfg.render
    loaded = load_pipeline(rc.model, rc.scheduler, rc.device, rc.dtype)
    set_cpu_threads(cfg, loaded.device)
    return CandidateRenderer(loaded, rc)


def render_shard(renderer: CandidateRenderer, cfg: PipelineConfig, triples: list[Triple],
                 counters: RenderCounters) -> Iterator[list[RenderedCandidate]]:
    """Every candidate of the triples, one chunk at a time, in shard order."""
    by_id = {t.triple_id: t for t in triples}
    for specs in chunk(shard_specs(cfg.seed, triples, cfg.render), cfg.render.resources.batch_size):
        yield renderer.render_chunk(by_id, specs, counters)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (an actor's: it renders shard after shard)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)   # bytes on macOS, KiB on Linux


def sample_of(r: RenderedCandidate) -> dict[str, bytes]:
    row = json.dumps(r.candidate.to_row(), sort_keys=True).encode()
    return {"__key__": r.candidate.candidate_id, **r.images, "json": row}


class Worker:
    """One per Ray actor: loads the pipeline once, then renders shards."""

    def __init__(self, cfg: PipelineConfig, out: str):
        self.cfg, self.store = cfg, RunStore(out)
        self.renderer = build_renderer(cfg)

    def _clear_partial(self, shard: int) -> None:
        """Remove temp files a killed run left for this shard (atomic writes never finished).
        Only a local run has them: on an object store a shard's files are staged off the store."""
        if not self.store.local:
            return
        d = self.store.stage_dir(STAGE)
        for tmp in d.glob(f".{STAGE}-{shard:05d}.*.tmp") if d.exists() else []:
            tmp.unlink(missing_ok=True)

    def process_shard(self, shard: int, scoring: Callable[[int], ContextManager[Callable]] | None = None
                      ) -> ShardStats:
        """Render shard ``shard``. With ``scoring`` (``render.store=kept``: the filter stage's
        ``Worker.scoring``), each chunk is handed to it as it is rendered and no render tar is
        written: the scorer stores the images worth keeping. Its shard is complete before this
        shard's done marker is written."""
        t0 = time.perf_counter()
        self._clear_partial(shard)
        triples = read_triples(self.store, shard)
        truncated = sum(self.renderer.is_truncated(c) for t in triples for c in (t.input_caption, t.output_caption))
        counters = RenderCounters()
        ok = candidates = 0
        failures: dict[str, int] = {}
        not_rendered: dict[str, str] = {}       # triple id -> why it was not rendered
        store_all = scoring is None or self.cfg.render.store == "all"
        with (self.store.tar_writer(STAGE, shard) if store_all else nullcontext()) as add_sample, \
                self.store.table_writer(STAGE, shard, CANDIDATE_SCHEMA) as add_rows, \
                (scoring(shard) if scoring else nullcontext()) as score:
            for rendered in render_shard(self.renderer, self.cfg, triples, counters):
                for r in rendered:
                    if r.candidate.status == "ok":
                        if add_sample:
                            add_sample(sample_of(r))
                        ok += 1
                    else:
                        reason = r.candidate.failure_reason.split(" at step")[0]
                        failures[reason] = failures.get(reason, 0) + 1
                        if r.candidate.failure_reason in NOT_RENDERED_REASONS:
                            not_rendered[r.candidate.triple_id] = r.candidate.failure_reason
                    if score:
                        score(r.candidate, r.images if r.candidate.status == "ok" else None)
                add_rows([r.candidate.to_row() for r in rendered])
                candidates += len(rendered)
        written = sum(self.store.size(name) for part in ("tar", "parquet")
                      if self.store.exists(name := self.store.shard_name(STAGE, shard, part)))
        extra = {name: round(v, 4) if isinstance(v, float) else v for name, v in vars(counters).items()}
        extra.update(triples=len(triples), truncated_captions=truncated,
                     triples_not_rendered=dict(Counter(not_rendered.values())), device=str(self.renderer.loaded.device),
                     dtype=str(self.renderer.loaded.dtype).replace("torch.", ""), model_id=self.cfg.render.model,
                     unet_row_saving=round(1 - counters.unet_rows / max(counters.unet_rows_unshared, 1), 4),
                     bytes_written=written, peak_rss_mb=peak_rss_mb(), scored_inline=scoring is not None)
        stats = ShardStats(stage=STAGE, shard=shard, count_in=len(triples), count_out=ok,
                           seconds=round(time.perf_counter() - t0, 3), rejections=failures, extra=extra)
        self.store.write_stats(stats)
        log.info("render shard %d: %d triples -> %d ok / %d candidates in %.1fs", shard, len(triples), ok,
                 candidates, stats.seconds)
        return stats


def finalize(cfg: PipelineConfig, store: RunStore) -> dict:
    """Run-level totals of the render stage (beside the store's summary.json)."""
    stats = store.read_stats(STAGE)
    total = {k: sum(s.extra.get(k, 0) for s in stats)
             for k in ("candidates", "failed", "truncated_captions", "unet_rows", "unet_rows_unshared")}
    total["unet_row_saving"] = round(1 - total["unet_rows"] / max(total["unet_rows_unshared"], 1), 4)
    not_rendered: Counter[str] = Counter()
    for s in stats:
        not_rendered.update(s.extra.get("triples_not_rendered", {}))
    total["triples_not_rendered"] = dict(not_rendered)
    store.write_json(f"{STAGE}/render-totals.json", total)
    return total


# --- one candidate again: the exact chunk it was rendered in ---------------------------------
def find_candidate(cfg: PipelineConfig, store: RunStore, candidate: str) -> tuple[int, list[Triple], list]:
    """(shard, the shard's triples, the chunk of specs that contains ``candidate``)."""
    from .specs import parse_candidate_id

    triple_id, index = parse_candidate_id(candidate)
    if index >= cfg.render.num_candidates:
        raise ValueError(f"candidate {candidate}: index {index} >= render.num_candidates ({cfg.render.num_candidates})")
    for shard in store.done_shards(INPUT_STAGE):
        triples = read_triples(store, shard)
        if any(t.triple_id == triple_id for t in triples):
            for specs in chunk(shard_specs(cfg.seed, triples, cfg.render), cfg.render.resources.batch_size):
                if any(s.candidate_id == candidate for s in specs):
                    return shard, triples, specs
    raise ValueError(f"candidate {candidate}: triple {triple_id} is in no done captions shard of {store.location}")


def render_one(run: str | Path, candidate: str, renderer: CandidateRenderer | None = None
               ) -> tuple[int, RenderedCandidate]:
    """Re-render one candidate of a run: (its shard, the candidate with its images).

    The candidate's whole chunk is rendered again, as in the run, because batch composition
    can change floating-point results: on the same device and settings the bytes are equal.
    """
    cfg = load_run_config(run)
    store = RunStore(run)
    shard, triples, specs = find_candidate(cfg, store, candidate)
    renderer = renderer or build_renderer(cfg)
    by_id = {t.triple_id: t for t in triples}
    rendered = renderer.render_chunk(by_id, specs)
    return shard, next(r for r in rendered if r.candidate.candidate_id == candidate)
