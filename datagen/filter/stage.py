"""Stage 3 on the run store: score every candidate of render shard i into filter shard i.

Protocol of datagen/run.py. A filter shard holds one ScoredCandidate row per candidate
(failures included, with their reason), the images of the candidates inside the looser
keep bound (so refilter never needs a GPU), the shapes-world oracle's judgements when the
triples allow, and its stats last. The render tar is streamed in chunks and the kept images
are streamed out, so memory stays bounded however large a shard is. ``finalize`` selects pairs from all stored scores and
exports them.
"""
from __future__ import annotations

import io
import json
import logging
import math
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterator

from PIL import Image

from datagen.clip.loading import check_clip_source, load_clip
from datagen.config import ConfigError, PipelineConfig
from datagen.records import Candidate, ScoredCandidate, Scores, ShardStats
from datagen.store import RunStore

from .oracle import ShapesOracle
from .scorer import ClipScorer
from .selection import Thresholds
from .table import ORACLE_PART, ORACLE_SCHEMA, SCORES_SCHEMA, STAGE, stream_samples

log = logging.getLogger(__name__)

RENDER = "render"
IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")


def check_keep_bound(cfg: PipelineConfig) -> None:
    """The keep bound must be looser than the thresholds, or selected pairs would lose their images."""
    keep, t = Thresholds.keep_bound(cfg.filter), Thresholds.from_config(cfg.filter)
    stricter = keep.looser_than(t)
    if stricter:
        raise ConfigError("filter keep bound is stricter than the selection thresholds for "
                          + ", ".join(f"keep_{k} ({getattr(keep, k)}) > {k} ({getattr(t, k)})" for k in stricter)
                          + ": selected pairs would have no stored images")


def check_filter_setup(cfg: PipelineConfig) -> None:
    """Fail before Ray starts: a keep bound that would drop selected pairs, a CLIP that cannot load."""
    check_keep_bound(cfg)
    check_clip_source(cfg.filter.clip_model, cfg.filter.clip_pretrained)


def _scored_inline(store: RunStore) -> set[int]:
    return {s.shard for s in store.read_stats(RENDER) if s.extra.get("scored_inline")}


def check_overwrite(cfg: PipelineConfig, store: RunStore) -> None:
    """Shards scored as they were rendered have no render tar to score again from."""
    inline = sorted(_scored_inline(store))
    if inline:
        raise ConfigError(f"--overwrite of the filter stage would delete {len(inline)} shard(s) that were scored as "
                          "they were rendered (render.store=kept), with no render tar to score them again from: "
                          "refilter changes thresholds without re-scoring; to re-score, render again with "
                          "--stages render,filter --overwrite")


def plan_shards(cfg: PipelineConfig, store: RunStore) -> list[int]:
    """Every done render shard. A filter shard older than its render shard is redone, unless the
    render stage scored it inline (``render.store=kept``): then it was written just before."""
    check_keep_bound(cfg)
    shards = store.done_shards(RENDER)
    inline = _scored_inline(store)
    scored_apart = set(store.done_shards(STAGE)) & set(shards) - inline
    if scored_apart:   # their times from one listing per stage (none needed when every shard was scored inline)
        rendered = store.modified_all(f"{RENDER}/{RENDER}-*.stats.json")
        scored = store.modified_all(f"{STAGE}/{STAGE}-*.stats.json")
    for s in scored_apart:
        if rendered[store.stats_name(RENDER, s)] > scored[store.stats_name(STAGE, s)]:
            log.info("filter shard %d is older than render shard %d: redoing it", s, s)
            store.remove(store.stats_name(STAGE, s))
    lost = sorted(s for s in inline if not store.is_done(STAGE, s))
    if lost:
        raise ConfigError(f"render shard(s) {lost[:10]} were scored as they were rendered (render.store=kept) and "
                          "kept no render tar, but their filter shards are gone: render them again with "
                          "--stages render,filter --overwrite (or refilter: thresholds change without re-scoring)")
    if any(not store.is_done(STAGE, s) for s in shards):
        check_clip_source(cfg.filter.clip_model, cfg.filter.clip_pretrained)  # fail before Ray starts
    return shards


def _decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()  # decode now: a truncated file fails here, not later
    return img.convert("RGB")


def _within(s: Scores, t: Thresholds) -> bool:
    return (s.sim_0 >= t.min_sim_0 and s.sim_1 >= t.min_sim_1 and s.sim_direction >= t.min_direction
            and s.sim_image >= t.min_image)


class Worker:
    """One CLIP model per actor; scores shards one at a time, streaming their images."""

    def __init__(self, cfg: PipelineConfig, out: str):
        f = cfg.filter
        self.cfg, self.store = cfg, RunStore(out)
        self.clip = load_clip(f.clip_model, f.clip_pretrained, f.device, f.precision)
        if str(self.clip.device) == "cpu":
            # CPU scores depend on the thread count (reduction order): fix it from the config, not the
            # environment. Scoring inside a render actor (render.store=kept) runs on the render's threads.
            import torch

            torch.set_num_threads(max(1, int(f.resources.num_cpus)))
        self.scorer = ClipScorer(self.clip, batch_size=f.resources.batch_size, preprocess=f.preprocess)
        self.keep = Thresholds.keep_bound(f)
        self.oracle = ShapesOracle.create(f.oracle)
        self.pool = ThreadPoolExecutor(max(1, int(f.resources.num_cpus)))  # PIL decodes outside the GIL
        # Candidates decoded at once: one CLIP batch. Four batches (as before) held 256 candidates' decoded
        # pairs, ~400 MB at 512 px, and a render actor scoring inline grew by that much (bench/render_memory.py).
        self.chunk = f.resources.batch_size

    def _render_count(self, shard: int) -> int:
        """How many candidates the render stage wrote (to count what an unreadable shard lost)."""
        try:
            return int(json.loads(self.store.read_text(self.store.stats_name(RENDER, shard))).get("count_out", 0)) or 1
        except Exception:
            return 1

    @staticmethod
    def _load_pair(c: Candidate, sample: dict[str, bytes]):
        """(input, edited, ext, input bytes, edited bytes), or a failure reason string."""
        found = {}
        for part in Candidate.IMAGE_KEYS:
            ext = next((e for e in (c.image_format, *IMAGE_EXTS) if f"{part}.{e}" in sample), None)
            if ext is None:
                return f"missing_image: no {part} image in the render tar"
            found[part] = (ext, sample[f"{part}.{ext}"])
        try:
            imgs = [_decode(found[p][1]) for p in Candidate.IMAGE_KEYS]
        except Exception as e:
            return f"unreadable_image: {type(e).__name__}: {e}"
        return imgs[0], imgs[1], found["input"][0], found["input"][1], found["edited"][1]

    def _score_chunk(self, chunk, results: dict, judgements: list, timing: dict) -> Iterator[dict[str, bytes]]:
        """Decode, score, judge a chunk; record results; yield the samples inside the keep bound."""
        ok = []
        for (c, _), res in zip(chunk, self.pool.map(lambda item: self._load_pair(*item), chunk)):
            if isinstance(res, str):
                results[c.candidate_id] = (None, res, False, c.image_format)
            else:
                ok.append((c, res))
        t0 = time.time()
        scores = self.scorer.score([c for c, _ in ok], [r[:2] for _, r in ok])
        timing["seconds"] += time.time() - t0
        timing["images"] += 2 * len(ok)
        for (c, (img_in, img_out, ext, b_in, b_out)), sc in zip(ok, scores):
            if not all(math.isfinite(v) for v in (sc.sim_0, sc.sim_1, sc.sim_image, sc.sim_direction)):
                results[c.candidate_id] = (None, "nan_score: non-finite CLIP features (half-precision overflow?)",
                                           False, ext)
                continue
            keep = _within(sc, self.keep)
            results[c.candidate_id] = (sc, "", keep, ext)
            if self.oracle is not None and (j := self.oracle.judge(c, img_in, img_out)) is not None:
                judgements.append(j)
            if keep:
                yield {"__key__": c.candidate_id, f"input.{ext}": b_in, f"edited.{ext}": b_out}

    @contextmanager
    def scoring(self, shard: int, scored_inline: bool = False) -> Iterator["_ShardScoring"]:
        """Score filter shard ``shard`` as its candidates arrive: yields ``take``, called as
        ``take(candidate, sample)``, where ``sample`` is the candidate's ``{"input.<ext>": bytes,
        "edited.<ext>": bytes}`` (None for a candidate that failed in render); ``take.scores_of(ids)``
        scores what is pending and returns those candidates' metrics (render.waves needs them). The
        images inside the keep bound are streamed into the filter tar; when the block ends the scores,
        the oracle's judgements and the stats (last) are written. The render stage calls this to score
        inline (``render.store=kept``)."""
        t0 = time.time()
        scoring = _ShardScoring(self)
        with self.store.tar_writer(STAGE, shard) as add_sample:
            scoring.add_sample = add_sample
            yield scoring
            scoring.flush()
        rows = scoring.rows()
        self._finish(shard, rows, scoring.judgements, scoring.n_kept(), t0, scoring.timing,
                     extra={"scored_inline": True} if scored_inline else None)

    def process_shard(self, shard: int) -> ShardStats:
        """Score render shard ``shard`` from its stored candidate table and image tar."""
        t0 = time.time()
        try:
            candidates = [Candidate.from_row(r) for r in self.store.read_table(RENDER, shard)]
        except Exception as e:
            self.store.write_tar(STAGE, shard, [])
            return self._finish(shard, [], [], 0, t0, {"seconds": 0.0, "images": 0},
                                shard_error=f"render-{shard:05d}.parquet: {type(e).__name__}: {e}",
                                lost=self._render_count(shard))
        by_id = {c.candidate_id: c for c in candidates}
        scoring = _ShardScoring(self)
        for c in candidates:
            if c.status != "ok":
                scoring.take(c, None)
        errors: list[str] = []
        with self.store.tar_writer(STAGE, shard) as add_sample:   # streams: scoring happens as the tar is written
            scoring.add_sample = add_sample
            for key, sample in stream_samples(self.store, self.store.shard_name(RENDER, shard, "tar"), errors):
                c = by_id.get(key)
                if c is None or key in scoring.results or key in scoring.pending_ids:
                    continue   # not a candidate of this shard, failed in render, or a duplicate
                scoring.take(c, sample)
            scoring.flush()
        shard_error = "; ".join(errors)
        for c in candidates:   # never reached in the tar
            if c.candidate_id not in scoring.results:
                reason = (f"unreadable_shard: {shard_error}" if shard_error
                          else "missing_image: no input and no edited image in the render tar")
                scoring.results[c.candidate_id] = (None, reason, False, c.image_format)
        scoring.order = candidates
        return self._finish(shard, scoring.rows(), scoring.judgements, scoring.n_kept(), t0, scoring.timing,
                            shard_error=shard_error)

    @staticmethod
    def _row(c: Candidate, s: Scores | None, reason: str, keep: bool, ext: str) -> dict:
        nan = float("nan")
        return ScoredCandidate(
            candidate_id=c.candidate_id, triple_id=c.triple_id, index=c.index, seed=c.seed, p=c.p,
            cfg_scale=c.cfg_scale, mode=c.mode, steps=c.steps, model_id=c.model_id, input_caption=c.input_caption,
            instruction=c.instruction, output_caption=c.output_caption, edit_kind=c.edit_kind, image_format=ext,
            sim_0=s.sim_0 if s else nan, sim_1=s.sim_1 if s else nan, sim_image=s.sim_image if s else nan,
            sim_direction=s.sim_direction if s else nan, status="failed" if reason else "ok",
            failure_reason=reason, images_kept=keep).to_row()

    def _finish(self, shard: int, rows: list[dict], judgements: list[dict], n_kept: int, t0: float, timing: dict,
                shard_error: str = "", lost: int = 0, extra: dict | None = None) -> ShardStats:
        """Write the scores and oracle tables, then the stats (last: the shard is done)."""
        self.store.write_table(STAGE, shard, rows, schema=SCORES_SCHEMA)
        parts = ["tar", "parquet"]
        if judgements:
            self.store.write_table(STAGE, shard, judgements, part=ORACLE_PART, schema=ORACLE_SCHEMA)
            parts.append(ORACLE_PART)
        rejections = Counter(r["failure_reason"].split(":", 1)[0] for r in rows if r["status"] != "ok")
        if lost:  # the candidate table itself was unreadable: count what the render stage wrote
            rejections["unreadable_shard"] += lost
        extra = {**(extra or {}), "images_kept": n_kept, "oracle_judged": len(judgements),
                 "clip_model": self.cfg.filter.clip_model,
                 "device": str(self.clip.device), "score_seconds": round(timing["seconds"], 3),
                 "images_per_s": round(timing["images"] / timing["seconds"], 2) if timing["seconds"] > 0 else 0.0,
                 "bytes_written": sum(self.store.size(name) for p in parts
                                      if self.store.exists(name := self.store.shard_name(STAGE, shard, p)))}
        if shard_error:
            extra["shard_error"] = shard_error
            log.error("filter shard %d: %s", shard, shard_error)
        stats = ShardStats(stage=STAGE, shard=shard, count_in=len(rows), count_out=sum(r["status"] == "ok" for r in rows),
                           seconds=round(time.time() - t0, 3), rejections=dict(rejections), extra=extra)
        self.store.write_stats(stats)
        return stats


class _ShardScoring:
    """One filter shard being scored: candidates arrive one by one (from a render tar, or from the
    render actor itself), are decoded and scored a chunk at a time, and the samples inside the keep
    bound go to ``add_sample`` as soon as they are scored."""

    def __init__(self, worker: Worker):
        self.worker = worker
        self.results: dict[str, tuple] = {}   # candidate_id -> (Scores | None, failure reason, images kept, ext)
        self.judgements: list[dict] = []
        self.timing = {"seconds": 0.0, "images": 0}
        self.order: list[Candidate] = []      # every candidate, in shard order: the rows' order
        self.pending: list[tuple[Candidate, dict]] = []
        self.pending_ids: set[str] = set()
        self.add_sample: Callable[[dict[str, bytes]], int] | None = None

    def take(self, c: Candidate, sample: dict | None) -> None:
        self.order.append(c)
        if c.status == "stopped":   # its preview predicted failure (render.preview): not a render failure
            self.results[c.candidate_id] = (None, c.failure_reason, False, c.image_format)
            return
        if c.status != "ok" or sample is None:
            self.results[c.candidate_id] = (None, f"render_failed: {c.failure_reason or c.status}", False,
                                            c.image_format)
            return
        self.pending.append((c, sample))
        self.pending_ids.add(c.candidate_id)
        if len(self.pending) >= self.worker.chunk:
            self.flush()

    __call__ = take

    def flush(self) -> None:
        for kept in self.worker._score_chunk(self.pending, self.results, self.judgements, self.timing):
            self.add_sample(kept)
        self.pending, self.pending_ids = [], set()

    def scores_of(self, candidate_ids: list[str]) -> dict[str, dict[str, float] | None]:
        """The four metrics of these candidates, scoring what is pending first; None: not scored."""
        if self.pending:
            self.flush()
        out = {}
        for cid in candidate_ids:
            s = self.results.get(cid, (None,))[0]
            out[cid] = None if s is None else {m: getattr(s, m) for m in ("sim_0", "sim_1", "sim_image", "sim_direction")}
        return out

    def n_kept(self) -> int:
        return sum(1 for r in self.results.values() if r[2])

    def rows(self) -> list[dict]:
        return [self.worker._row(c, *self.results[c.candidate_id]) for c in self.order]


def finalize(cfg: PipelineConfig, store: RunStore) -> dict:
    """Select pairs from all stored scores, write oracle figures when labels exist, export."""
    from .export import export_run
    from .refilter import reselect

    summary = {"selection": reselect(cfg, store)}
    summary["oracle"] = write_run_oracle(cfg, store)
    if cfg.export.formats:
        summary["export"] = export_run(cfg, store)
    return summary


def write_run_oracle(cfg: PipelineConfig, store: RunStore) -> dict | None:
    """``report/oracle.json`` from the stored judgements and the current selection, if any."""
    from .oracle import oracle_summary, write_oracle_json
    from .selection import Selector
    from .table import read_oracle, read_scores

    judged = read_oracle(store)
    if judged is None:
        return None
    scores = read_scores(store)
    selected = Selector(scores).select(Thresholds.from_config(cfg.filter), cfg.filter.max_pairs_per_triple)
    values = oracle_summary(scores, judged, selected)
    write_oracle_json(store.location, values)
    return {k: v for k, v in values.items() if k != "by_edit_kind"}
