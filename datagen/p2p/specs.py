"""Candidate settings and how candidates are batched: pure functions of the config and ids.

Candidate ``index`` of a triple draws (seed, p, cfg) from a generator keyed by
``seed_from(run seed, triple id, index)``; p ~ U(p_min, p_max), cfg ~ U(cfg_min, cfg_max) (the
original generator's: p ~ U(0.1, 0.9), cfg ~ U(7.5, 15)). With ``candidates_per_seed`` = k > 1, consecutive
candidates form groups of k that take the seed and cfg of the group's first candidate and keep
their own p: they share the source branch and the edited prefix when rendered (sampler.py).

A shard's candidates are rendered in consecutive chunks of ``batch_size`` (triple order, then
index), so the chunk of any candidate, and therefore its exact computation, can be rebuilt.
"""
from __future__ import annotations

import random

from datagen.config import RenderConfig
from datagen.records import CandidateSpec, Triple, candidate_id, seed_from


def _draw(run_seed: int, triple_id: str, index: int, cfg: RenderConfig) -> tuple[int, float, float]:
    rng = random.Random(seed_from(run_seed, triple_id, index))
    seed = rng.getrandbits(63)
    p = rng.uniform(cfg.p_min, cfg.p_max)
    cfg_scale = rng.uniform(cfg.cfg_min, cfg.cfg_max)
    return seed, p, cfg_scale


def draw_spec(run_seed: int, triple_id: str, index: int, cfg: RenderConfig) -> CandidateSpec:
    """The settings of candidate ``index`` of a triple."""
    seed, p, cfg_scale = _draw(run_seed, triple_id, index, cfg)
    leader = index - index % cfg.candidates_per_seed
    if leader != index:
        seed, _, cfg_scale = _draw(run_seed, triple_id, leader, cfg)
    return CandidateSpec(candidate_id=candidate_id(triple_id, index), triple_id=triple_id, index=index,
                         seed=seed, p=p, cfg_scale=cfg_scale, mode=cfg.mode)


def draw_specs(run_seed: int, triple_id: str, cfg: RenderConfig) -> list[CandidateSpec]:
    return [draw_spec(run_seed, triple_id, i, cfg) for i in range(cfg.num_candidates)]


def shard_specs(run_seed: int, triples: list[Triple], cfg: RenderConfig) -> list[CandidateSpec]:
    return [s for t in triples for s in draw_specs(run_seed, t.triple_id, cfg)]


def chunk(specs: list[CandidateSpec], batch_size: int) -> list[list[CandidateSpec]]:
    """Consecutive chunks of ``batch_size`` candidates: the unit of one sampling loop."""
    return [specs[i:i + batch_size] for i in range(0, len(specs), batch_size)]


def parse_candidate_id(cid: str) -> tuple[str, int]:
    """(triple id, index) of a candidate id ``<triple_id>_<index:04d>``."""
    triple_id, sep, index = cid.rpartition("_")
    if not sep or not index.isdigit() or not triple_id:
        raise ValueError(f"{cid!r} is not a candidate id (expected <triple_id>_<index>, e.g. 3f2a9c0d1e7b4a55_0007)")
    return triple_id, int(index)
