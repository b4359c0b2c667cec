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
from datagen.preview_rule import PreviewRule, load_rule
from datagen.records import Candidate, ShardStats, Triple
from datagen.store import RunStore
from datagen.waves import TripleProgress, after_wave, total_waves, wave_of

from .caption_guard import REASONS as NOT_RENDERED_REASONS
from .loading import load_pipeline
from .render import CandidateRenderer, PreviewScorer, RenderCounters, RenderedCandidate
from .specs import chunk, draw_spec, shard_specs

log = logging.getLogger(__name__)

STAGE = "render"
INPUT_STAGE = "captions"

# Explicit, so that a shard whose candidates all failed or that has no triples still has columns.
_ARROW = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "float | None": pa.float64()}
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


PREVIEW_RULE_FILE = "preview_rule.json"   # <run>/preview_rule.json: the stop rule the run renders with


def run_preview_rule(cfg: PipelineConfig, run: str | Path) -> PreviewRule | None:
    """The run's preview stop rule: the one saved in the run folder, saved there from
    ``render.preview.rule`` on first use, so that render-one and a resumed run use the same."""
    pv = cfg.render.preview
    store = RunStore(run)
    saved = store.url(PREVIEW_RULE_FILE)
    if pv is None or not pv.rule:
        if store.exists(PREVIEW_RULE_FILE):
            raise ValueError(f"{saved}: this run rendered with a preview stop rule, but render.preview.rule is not set")
        return None
    rule = load_rule(pv.rule)
    if store.exists(PREVIEW_RULE_FILE):
        if load_rule(saved) != rule:
            raise ValueError(f"render.preview.rule {pv.rule} differs from the rule this run rendered with ({saved}): "
                             "a run keeps one rule; start a new run (or --overwrite) to use another")
        return rule
    store.write_text(PREVIEW_RULE_FILE, rule.to_json())
    return rule


def build_renderer(cfg: PipelineConfig, preview_scorer: PreviewScorer | None = None,
                   preview_rule: PreviewRule | None = None) -> CandidateRenderer:
    rc = cfg.render
    loaded = load_pipeline(rc.model, rc.scheduler, rc.device, rc.dtype)
    set_cpu_threads(cfg, loaded.device)
    return CandidateRenderer(loaded, rc, preview_scorer, preview_rule)


# Scores of a rendered chunk's candidates (candidate id -> the four metrics; None: not scored), given
# by whoever scores inline: the waves need them right after each chunk.
ChunkScores = Callable[[list[RenderedCandidate]], dict[str, dict[str, float] | None]]


def render_shard(renderer: CandidateRenderer, cfg: PipelineConfig, triples: list[Triple],
                 counters: RenderCounters, score_chunk: ChunkScores | None = None,
                 progress: dict[str, TripleProgress] | None = None) -> Iterator[list[RenderedCandidate]]:
    """Every candidate of the triples, one chunk at a time, in shard order; with ``render.waves``,
    wave by wave (``wave_chunks``), skipping the triples that are enough or hopeless (``progress``)."""
    by_id = {t.triple_id: t for t in triples}
    if cfg.render.waves is None:
        for specs in chunk(shard_specs(cfg.seed, triples, cfg.render), cfg.render.resources.batch_size):
            yield renderer.render_chunk(by_id, specs, counters)
        return
    if score_chunk is None:
        raise ValueError("render.waves needs each candidate's scores as it is rendered: the render stage must "
                         "score inline (render.store=kept)")
    w, rc = cfg.render.waves, cfg.render
    n_waves = total_waves(rc.num_candidates, w)
    progress = progress if progress is not None else {}
    for t in triples:
        progress.setdefault(t.triple_id, TripleProgress())
    for wave in range(n_waves):
        open_triples = [t for t in triples if progress[t.triple_id].state(w, n_waves) == "open"]
        wave_scores: dict[str, list] = {t.triple_id: [] for t in open_triples}
        for specs in wave_chunks(cfg, open_triples, wave):
            rendered = renderer.render_chunk(by_id, specs, counters)
            scores = score_chunk(rendered)
            for r in rendered:
                wave_scores[r.candidate.triple_id].append(scores.get(r.candidate.candidate_id))
            yield rendered
        for t in open_triples:
            progress[t.triple_id] = after_wave(progress[t.triple_id], wave_scores[t.triple_id], cfg.filter, w)
    evaluations = rows_per_candidate(renderer, cfg)
    for p in progress.values():
        counters.skipped += rc.num_candidates - p.candidates
        counters.unet_rows_saved_waves += (rc.num_candidates - p.candidates) * evaluations


def wave_specs(cfg: PipelineConfig, triples: list[Triple], wave: int) -> list:
    """The candidates of wave ``wave`` of these triples, in triple then index order."""
    rc = cfg.render
    first = wave * rc.waves.size
    return [draw_spec(cfg.seed, t.triple_id, i, rc) for t in triples
            for i in range(first, min(first + rc.waves.size, rc.num_candidates))]


def wave_chunks(cfg: PipelineConfig, triples: list[Triple], wave: int) -> list[list]:
    """A wave's chunks: its candidates of the triples still open, ``batch_size`` at a time."""
    return chunk(wave_specs(cfg, triples, wave), cfg.render.resources.batch_size)


def rows_per_candidate(renderer: CandidateRenderer, cfg: PipelineConfig) -> int:
    """UNet rows of one candidate rendered alone: two branches x two CFG halves x evaluations."""
    scheduler = type(renderer.loaded.pipe.scheduler).from_config(renderer.loaded.pipe.scheduler.config)
    scheduler.set_timesteps(cfg.render.steps)
    return 4 * len(scheduler.timesteps)


def image_stage(store: RunStore, shard: int) -> str:
    """Where shard ``shard``'s images are stored: the render tar, or (render.store=kept, no render
    tar) the filter shard, which holds those inside the keep bound."""
    return STAGE if store.exists(store.shard_name(STAGE, shard, "tar")) else "filter"


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

    def __init__(self, cfg: PipelineConfig, out: str, preview_scorer: PreviewScorer | None = None):
        self.cfg, self.store = cfg, RunStore(out)
        self.renderer = build_renderer(cfg, preview_scorer, run_preview_rule(cfg, out))

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
        progress: dict[str, TripleProgress] = {}
        with (self.store.tar_writer(STAGE, shard) if store_all else nullcontext()) as add_sample, \
                self.store.table_writer(STAGE, shard, CANDIDATE_SCHEMA) as add_rows, \
                (scoring(shard) if scoring else nullcontext()) as score:

            def take(rendered: list[RenderedCandidate]) -> dict[str, dict | None]:
                """Store (and score) one rendered chunk; its candidates' scores when waves need them."""
                nonlocal ok, candidates
                for r in rendered:
                    if r.candidate.status == "ok":
                        if add_sample:
                            add_sample(sample_of(r))
                        ok += 1
                    else:
                        reason = r.candidate.failure_reason.split(" at step")[0]
                        if r.candidate.status == "stopped":
                            reason = reason.split(":")[0]   # stopped_by_preview
                        failures[reason] = failures.get(reason, 0) + 1
                        if r.candidate.failure_reason in NOT_RENDERED_REASONS:
                            not_rendered[r.candidate.triple_id] = r.candidate.failure_reason
                    if score:
                        score(r.candidate, r.images if r.candidate.status == "ok" else None)
                add_rows([r.candidate.to_row() for r in rendered])
                candidates += len(rendered)
                if score and self.cfg.render.waves is not None:
                    return score.scores_of([r.candidate.candidate_id for r in rendered])
                return {}

            waves = self.cfg.render.waves is not None
            for rendered in render_shard(self.renderer, self.cfg, triples, counters,
                                         take if waves and score else None, progress):
                if not waves:
                    take(rendered)
        written = sum(self.store.size(name) for part in ("tar", "parquet")
                      if self.store.exists(name := self.store.shard_name(STAGE, shard, part)))
        extra = {name: round(v, 4) if isinstance(v, float) else v for name, v in vars(counters).items()}
        extra.update(triples=len(triples), truncated_captions=truncated,
                     triples_not_rendered=dict(Counter(not_rendered.values())), device=str(self.renderer.loaded.device),
                     dtype=str(self.renderer.loaded.dtype).replace("torch.", ""), model_id=self.cfg.render.model,
                     unet_row_saving=round(1 - counters.unet_rows / max(counters.unet_rows_unshared, 1), 4),
                     bytes_written=written, peak_rss_mb=peak_rss_mb(), scored_inline=scoring is not None)
        if (reference := self.cfg.render.steps_reference) is not None:
            # UNet rows scale with the step count: the same candidates, stopped at the same share of it.
            steps = self.cfg.render.steps
            extra["unet_rows_saved_steps"] = round(counters.unet_rows * (reference - steps) / steps)
        if self.cfg.render.waves is not None:
            n_waves = total_waves(self.cfg.render.num_candidates, self.cfg.render.waves)
            states = Counter(p.state(self.cfg.render.waves, n_waves) for p in progress.values())
            extra.update(triples_enough=states["enough"], triples_covered=states["covered"],
                         triples_hopeless=states["hopeless"], triples_all_waves=states["done"])
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
             for k in ("candidates", "failed", "truncated_captions", "unet_rows", "unet_rows_unshared",
                       # issue 41's levers: rows spent, and saved by each (steps: against render.steps_reference)
                       "previewed", "stopped", "unet_rows_saved_preview", "skipped", "unet_rows_saved_waves",
                       "unet_rows_saved_steps",
                       "triples_enough", "triples_covered", "triples_hopeless", "triples_all_waves")}
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
            if cfg.render.waves is None:
                chunks = chunk(shard_specs(cfg.seed, triples, cfg.render), cfg.render.resources.batch_size)
            else:
                chunks = wave_chunks(cfg, started_triples(store, shard, triples, cfg, candidate), wave_of(index, cfg.render.waves))
            for specs in chunks:
                if any(s.candidate_id == candidate for s in specs):
                    return shard, triples, specs
    raise ValueError(f"candidate {candidate}: triple {triple_id} is in no done captions shard of {store.location}")


def started_triples(store: RunStore, shard: int, triples: list[Triple], cfg: PipelineConfig,
                    candidate: str) -> list[Triple]:
    """Rendered in waves: the triples whose wave of ``candidate`` was started (the render table has
    a row for each candidate started), which made up that wave's chunks."""
    from datagen.records import candidate_id

    from .specs import parse_candidate_id

    if not store.is_done(STAGE, shard):
        raise ValueError(f"candidate {candidate}: rendered in waves, its chunk is known only from the done render "
                         f"shard {shard}, which is not done yet")
    started = {r["candidate_id"] for r in store.read_table(STAGE, shard)}
    if candidate not in started:
        raise ValueError(f"candidate {candidate} was never rendered: its triple was enough or hopeless before its "
                         f"wave (render.waves)")
    w = cfg.render.waves
    first = wave_of(parse_candidate_id(candidate)[1], w) * w.size
    return [t for t in triples if candidate_id(t.triple_id, first) in started]


def render_one(run: str | Path, candidate: str, renderer: CandidateRenderer | None = None,
               preview_scorer: PreviewScorer | None = None) -> tuple[int, RenderedCandidate]:
    """Re-render one candidate of a run: (its shard, the candidate with its images).

    The candidate's whole chunk is rendered again, as in the run, because batch composition
    can change floating-point results: on the same device and settings the bytes are equal.
    """
    cfg = load_run_config(run)
    store = RunStore(run)
    shard, triples, specs = find_candidate(cfg, store, candidate)
    renderer = renderer or build_renderer(cfg, preview_scorer, run_preview_rule(cfg, run))
    by_id = {t.triple_id: t for t in triples}
    rendered = renderer.render_chunk(by_id, specs)
    return shard, next(r for r in rendered if r.candidate.candidate_id == candidate)
