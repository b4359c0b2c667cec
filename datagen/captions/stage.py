"""Stage 1 on the run store: shard ``i`` turns source captions [i*shard_size, (i+1)*shard_size) into triples.

Each shard writes ``captions/captions-<i>.parquet`` (Triple rows) and then its stats (every
rejection counted by reason, request and retry counts, token usage), the stats last so that a
killed run leaves the shard undone and a re-run redoes it. Triple ids come from (run seed,
source id, backend, model, prompt version): a re-run writes the same ids. A triple whose backend
does not know its kind of edit (an LLM) gets one from its instruction (edit_kinds.py).
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import fields

import numpy as np
import pyarrow as pa

from datagen.config import CaptionsConfig, ConfigError, PipelineConfig
from datagen.distribute import StageFailed
from datagen.records import ShardStats, Triple, stable_id
from datagen.store import RunStore

from .backends import Draft, make_backend
from .edit_kinds import classify_instruction
from .openai_client import CallCounters, api_key
from .sources import CaptionSource
from .validation import Moderator, Validator, duplicate_flags

log = logging.getLogger(__name__)

STAGE = "captions"
TRIPLE_SCHEMA = pa.schema([(f.name, pa.string()) for f in fields(Triple)])
DUPLICATES_FILE = "duplicates.npy"   # one bit per source caption: it repeats an earlier one


def load_duplicates(store: RunStore, source: CaptionSource, count: int, slice_size: int = 100_000):
    """The run's duplicate flags of its ``count`` source captions (``captions/duplicates.npy``),
    found in one streaming pass over the source the first time and kept in the run."""
    name = f"{STAGE}/{DUPLICATES_FILE}"
    if store.exists(name):
        with store.open(name) as f:
            return np.unpackbits(np.load(f))[:count].astype(bool)
    flags = duplicate_flags(source.captions(s, min(s + slice_size, count)) for s in range(0, count, slice_size))
    with store.writing(name) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.packbits(flags))
    return flags


def planned_count(cfg: CaptionsConfig, source: CaptionSource) -> int:
    """How many source captions the run turns into triples: num_triples; a shorter source is an error."""
    size = source.size()
    if size is not None and size < cfg.num_triples:
        raise ConfigError(
            f"captions.num_triples={cfg.num_triples} but the source ({source.describe()}) holds {size} caption(s): "
            "point captions.source at a larger one, e.g. --set captions.source.kind=hf "
            "--set captions.source.path=DATASET --set captions.source.column=TEXT, or --set captions.source.kind=file "
            f"--set captions.source.path=captions.parquet; or ask for fewer: --set captions.num_triples={size}")
    return cfg.num_triples


def plan_shards(cfg: PipelineConfig, store: RunStore) -> list[int]:
    ccfg = cfg.captions
    if ccfg.backend == "openai":
        api_key(ccfg.openai)  # a missing key fails here, before any Ray actor starts
    source = CaptionSource(ccfg.source, cfg.seed)
    count = planned_count(ccfg, source)   # num_triples, checked against the source
    if ccfg.validation.dedup:
        load_duplicates(store, source, count)   # once per run, here in the driver; actors read the flags
    return list(range(ccfg.num_shards))


def preflight(cfg: PipelineConfig) -> None:
    """Before the first shard: one probe request, so that a refusing endpoint stops the run here."""
    if cfg.captions.backend == "openai":
        make_backend(cfg.captions, cfg.seed).probe()


def triple_id(run_seed: int, source_id: str, backend: str, model: str, prompt_version: str) -> str:
    return stable_id(run_seed, source_id, backend, model, prompt_version)


class Worker:
    """Built once per Ray actor: loads the source and the backend, then processes shards."""

    def __init__(self, cfg: PipelineConfig, out: str):
        self.cfg = cfg
        self.ccfg = cfg.captions
        self.store = RunStore(out)
        self.source = CaptionSource(self.ccfg.source, cfg.seed)
        self.count = planned_count(self.ccfg, self.source)
        self.validator = Validator(self.ccfg.validation)
        self.backend = make_backend(self.ccfg, cfg.seed)
        self.moderator = Moderator(self.ccfg.openai) if self.ccfg.openai.moderation else None
        self._duplicates = None

    def duplicates(self):
        """Which source captions repeat an earlier one: found once per run by ``plan_shards`` (the
        driver) and read here, so no actor reads the whole source."""
        if self._duplicates is None:
            self._duplicates = (load_duplicates(self.store, self.source, self.count) if self.ccfg.validation.dedup
                                else np.zeros(self.count, dtype=bool))
        return self._duplicates

    def process_shard(self, shard: int) -> ShardStats:
        t0 = time.time()
        start = shard * self.ccfg.shard_size
        stop = min(start + self.ccfg.shard_size, self.count)
        if start >= stop:
            raise ValueError(f"captions shard {shard} is outside the plan ({self.count} captions, "
                             f"shard_size {self.ccfg.shard_size})")
        sources = self.source.get(start, stop)
        rejections: Counter[str] = Counter()

        # Source checks first: a caption rejected here costs no request.
        todo = []
        for src, duplicate in zip(sources, self.duplicates()[start:stop]):
            reason = "duplicate_caption" if duplicate else self.validator.check_caption(src.caption)
            if reason:
                rejections[reason] += 1
            else:
                todo.append(src)

        self.backend.counters = CallCounters()  # per-shard figures
        kept: list[Draft] = []
        for draft in self.backend.draft(todo):
            reason = draft.rejection or self.validator.check_reply(
                draft.input_caption, draft.instruction, draft.output_caption)
            if reason:
                rejections[reason] += 1
            else:
                kept.append(draft)

        extra = {"backend": self.backend.name, "model": self.backend.model,
                 "prompt_version": self.backend.prompt_version, **self.backend.counters.as_extra()}
        if self.moderator is not None:
            self.moderator.counters = CallCounters()
            flags = self.moderator.flagged([(d.input_caption, d.instruction, d.output_caption) for d in kept])
            if any(flags):
                rejections["moderation_flagged"] += sum(flags)
            kept = [d for d, flagged in zip(kept, flags) if not flagged]
            extra["moderation_requests"] = self.moderator.counters.requests
            extra["moderation_retries"] = self.moderator.counters.retries

        triples = [self._triple(d) for d in kept]
        self.store.write_table(STAGE, shard, [t.to_row() for t in triples], schema=TRIPLE_SCHEMA)
        stats = ShardStats(STAGE, shard, count_in=len(sources), count_out=len(triples),
                           seconds=round(time.time() - t0, 3), rejections=dict(rejections), extra=extra)
        self.store.write_stats(stats)  # last: marks the shard done
        log.info("captions shard %d: %d caption(s) -> %d triple(s); rejected %s; %d request(s), %d retry(ies)",
                 shard, len(sources), len(triples), dict(rejections) or "none", extra["requests"], extra["retries"])
        return stats

    def _triple(self, draft: Draft) -> Triple:
        b = self.backend
        return Triple(
            triple_id=triple_id(self.cfg.seed, draft.source.source_id, b.name, b.model, b.prompt_version),
            input_caption=draft.input_caption, instruction=draft.instruction,
            output_caption=draft.output_caption, source_id=draft.source.source_id,
            edit_kind=draft.edit_kind or classify_instruction(draft.instruction), backend=b.name, model=b.model,
            prompt_version=b.prompt_version)


def finalize(cfg: PipelineConfig, store: RunStore) -> dict:
    """Check the stage as a whole (ids unique, some triples kept) and count triples by kind of edit."""
    rows = store.read_stage(STAGE)
    stats = store.read_stats(STAGE)
    asked = sum(s.count_in for s in stats)
    if asked and not rows:  # later stages would run on nothing
        rejections: Counter[str] = Counter()
        for s in stats:
            rejections.update(s.rejections)
        raise StageFailed(f"captions: 0 triples kept from {asked} source caption(s); rejected: "
                          f"{dict(rejections.most_common())}. The shards are done (a re-run keeps them): "
                          f"change the model or prompt and run again with --overwrite")
    ids = Counter(r["triple_id"] for r in rows)
    repeated = [i for i, n in ids.items() if n > 1]
    if repeated:
        raise RuntimeError(f"captions: {len(repeated)} triple id(s) occur more than once, e.g. {repeated[:3]}")
    return {"triples": len(rows), "edit_kinds": dict(Counter(r["edit_kind"] or "unknown" for r in rows))}
