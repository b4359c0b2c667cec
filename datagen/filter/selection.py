"""Which candidates become pairs: thresholds on the four metrics, then top-k per triple.

InstructPix2Pix's filter: keep a candidate if sim_0, sim_1, sim_direction >= 0.2 and
sim_image >= 0.75 (0.7 in the code), sort the survivors of a triple by sim_direction and keep
at most 4. Pure functions of a scores table (a DataFrame with the Scores columns), so the
decision can be redone and audited from stored scores alone. Ties in sim_direction are
broken by candidate_id so the choice never depends on row order.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from datagen.config import FilterConfig

# Threshold name -> the metric it bounds from below.
THRESHOLD_METRIC = {"min_sim_0": "sim_0", "min_sim_1": "sim_1", "min_direction": "sim_direction",
                    "min_image": "sim_image"}


@dataclass(frozen=True)
class Thresholds:
    min_sim_0: float = 0.2
    min_sim_1: float = 0.2
    min_direction: float = 0.2
    min_image: float = 0.75

    @classmethod
    def from_config(cls, cfg: FilterConfig) -> "Thresholds":
        return cls(cfg.min_sim_0, cfg.min_sim_1, cfg.min_direction, cfg.min_image)

    @classmethod
    def keep_bound(cls, cfg: FilterConfig) -> "Thresholds":
        """The looser bound under which a candidate's images are kept for refilter."""
        return cls(cfg.keep_min_sim_0, cfg.keep_min_sim_1, cfg.keep_min_direction, cfg.keep_min_image)

    def replace(self, **changes: float) -> "Thresholds":
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    def looser_than(self, other: "Thresholds") -> list[str]:
        """Names of the thresholds where ``self`` is stricter than ``other`` (empty: looser everywhere)."""
        return [k for k, v in self.as_dict().items() if v > getattr(other, k)]


def passes(scores: pd.DataFrame, t: Thresholds) -> np.ndarray:
    """Boolean mask: the candidate was scored and meets every threshold (NaN never passes)."""
    mask = np.asarray(scores["status"] == "ok", dtype=bool)
    for name, metric in THRESHOLD_METRIC.items():
        mask = mask & (scores[metric].to_numpy(dtype=float) >= getattr(t, name))
    return mask


class Selector:
    """Fast repeated selection over one scores table (threshold grids in the audit).

    Sorting by (triple, -sim_direction, candidate_id) is done once; each ``select`` is then
    a few vectorised passes: the rank of a passing candidate inside its triple is a running
    count of passers since the triple's first row.
    """

    def __init__(self, scores: pd.DataFrame):
        self.scores = scores
        keys = pd.DataFrame({"t": scores["triple_id"].to_numpy(), "d": scores["sim_direction"].to_numpy(dtype=float),
                             "c": scores["candidate_id"].to_numpy()})
        self.order = keys.sort_values(["t", "d", "c"], ascending=[True, False, True], na_position="last",
                                      kind="mergesort").index.to_numpy()
        groups = keys["t"].to_numpy()[self.order]
        starts = np.ones(len(groups), dtype=bool)
        starts[1:] = groups[1:] != groups[:-1]
        # index (in sorted order) of the first row of each row's triple
        self._group_start = np.maximum.accumulate(np.where(starts, np.arange(len(groups)), 0))

    def select(self, t: Thresholds, max_pairs: int, mask: np.ndarray | None = None) -> np.ndarray:
        """Boolean mask (table order) of the selected candidates; ``mask`` = passes() if given."""
        return self.ranks(t, max_pairs, mask) > 0

    def ranks(self, t: Thresholds, max_pairs: int, mask: np.ndarray | None = None) -> np.ndarray:
        """1-based rank by sim_direction within the triple of each selected candidate, 0 if not selected."""
        ok = passes(self.scores, t) if mask is None else mask
        ok_sorted = ok[self.order]
        running = np.cumsum(ok_sorted)
        before = (running - ok_sorted)[self._group_start]
        rank_sorted = np.where(ok_sorted, running - before, 0)
        rank_sorted[rank_sorted > max_pairs] = 0
        out = np.zeros(len(ok), dtype=np.int64)
        out[self.order] = rank_sorted
        return out


def select(scores: pd.DataFrame, t: Thresholds, max_pairs: int) -> np.ndarray:
    """Boolean mask of the selected candidates: thresholds, then top ``max_pairs`` per triple."""
    return Selector(scores).select(t, max_pairs)


def selection_table(scores: pd.DataFrame, t: Thresholds, max_pairs: int, extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """The selected rows (ids, rank, metrics, ``extra`` columns), sorted by triple then rank."""
    ranks = Selector(scores).ranks(t, max_pairs)
    chosen = scores.loc[ranks > 0, ["candidate_id", "triple_id", *THRESHOLD_METRIC.values(), *extra]].copy()
    chosen.insert(2, "rank", ranks[ranks > 0])
    return chosen.sort_values(["triple_id", "rank"], kind="mergesort").reset_index(drop=True)
