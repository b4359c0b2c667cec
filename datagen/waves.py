"""Waves: when a triple has enough candidates, or none worth rendering more of (issue 41).

A triple's candidates are rendered in waves of ``render.waves.size`` (index order). After each
wave its candidates' final scores are known (the render actor scores inline), and the triple
- is *enough* once ``k`` of its candidates pass every filter threshold by ``margin``;
- is *hopeless* once ``m`` waves are done and none of its candidates came within ``near`` of
  passing (each metric at least its threshold minus ``near``), or, with ``far`` set, already after
  one wave when every candidate scored so far fell further than ``far`` short of passing;
  a candidate's *shortfall* is its largest gap below a threshold, so all these read one number;
- with ``rescue_after`` set, is *covered* after that many waves when it has a pass (fewer than
  ``k``), and *hopeless* when none of its candidates came within ``rescue_near``: the waves past
  ``rescue_after`` go only to triples about to be lost, the ones a strict filter covers by chance;
- is *open* otherwise, until its last wave.
Pure functions of the scores and the config, so the decision can be redone from stored scores.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from datagen.config import FilterConfig, WavesConfig

# Filter threshold key -> the metric it bounds from below (as in Stage 3's selection).
METRIC_THRESHOLD = {"sim_0": "min_sim_0", "sim_1": "min_sim_1", "sim_direction": "min_direction",
                    "sim_image": "min_image"}


def shortfall(scores: dict[str, float] | None, f: FilterConfig) -> float:
    """How far the candidate falls short of passing: the largest gap below a threshold (<= 0: it
    passes); inf when it has no scores (stopped, failed) or a metric is missing."""
    if scores is None:
        return math.inf
    gaps = [getattr(f, key) - scores.get(m, math.nan) for m, key in METRIC_THRESHOLD.items()]
    return max(gaps) if all(math.isfinite(g) for g in gaps) else math.inf


@dataclass
class TripleProgress:
    """What the waves so far left a triple with."""

    waves: int = 0        # waves rendered
    candidates: int = 0   # candidates started
    passed: int = 0       # passed with margin
    closest: float = math.inf   # the smallest shortfall of its scored candidates (inf: none scored)

    def state(self, w: WavesConfig, total_waves: int) -> str:
        """open | enough | covered | hopeless | done (every wave rendered)."""
        if self.passed >= w.k:
            return "enough"
        if self.waves >= w.m and self.closest > w.near:
            return "hopeless"
        # A scored wave far from passing is evidence enough; a wave the previews stopped whole is none.
        if w.far is not None and w.far < self.closest < math.inf:
            return "hopeless"
        if w.rescue_after is not None and self.waves >= w.rescue_after:
            if self.passed:
                return "covered"
            if self.closest > w.rescue_near:
                return "hopeless"
        return "done" if self.waves >= total_waves else "open"


def after_wave(progress: TripleProgress, wave_scores: list[dict[str, float] | None], f: FilterConfig,
               w: WavesConfig) -> TripleProgress:
    """``progress`` once one more wave with these candidates' final scores (None: no scores) is in."""
    gaps = [shortfall(s, f) for s in wave_scores]
    return TripleProgress(waves=progress.waves + 1, candidates=progress.candidates + len(wave_scores),
                          passed=progress.passed + sum(g <= -w.margin for g in gaps),
                          closest=min([progress.closest, *gaps]))


def total_waves(num_candidates: int, w: WavesConfig) -> int:
    return -(-num_candidates // w.size)


def wave_of(index: int, w: WavesConfig) -> int:
    return index // w.size
