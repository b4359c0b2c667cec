"""The audit's figures over every stored row, computed without holding the scores table.

Counts, distributions, threshold sweeps, marginal effects and the min_direction x min_image
grid are exact over all candidates, at any scale, in bounded memory:
  - distributions: one metric at a time, the scored values of all shards in one float array
    (45M candidates: 360 MB), in table order, so mean and quantiles are numpy's on the table;
  - pass counts: one streaming pass over the shards that histograms each metric against the
    sweep values (a candidate passes ``value`` iff it falls in a bin at or above it);
  - pairs kept: top-k per triple keeps min(k, passers) pairs, so pairs kept as one threshold
    moves are the count of the triple's k best values of that metric (among the candidates
    passing the other thresholds) at or above the value. DuckDB collects those k best per
    triple in one GROUP BY (score_query.py), for every sweep and every grid row at once.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .score_query import at_least, connect, passes_sql, selected_sql
from .selection import THRESHOLD_METRIC, Thresholds

GRID_ROWS, GRID_COLS = "min_direction", "min_image"
OFF = -np.inf   # a threshold that removes nothing
DISTRIBUTION_QUANTILES = (0.1, 0.5, 0.9)
SWEEP_QUANTILES = (0.01, 0.99)   # a sweep spans the metric's 1st-99th percentile


def _r(x: float | None, nd: int = 6) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), nd)


def sweep_range(lo: float | None, hi: float | None, current: float, n: int) -> list[float]:
    """``n`` threshold values from ``lo`` to ``hi`` (widened to hold the current value ± 0.05) and the current value."""
    if lo is None:
        lo, hi = current - 0.2, current + 0.2
    lo, hi = min(lo, current - 0.05), max(hi, current + 0.05)
    return sorted({round(float(v), 4) for v in np.linspace(lo, hi, n)} | {round(current, 4)})


def sweep_values(values: np.ndarray, current: float, n: int) -> list[float]:
    """``n`` threshold values spanning the metric's range (1st-99th percentile) and the current value."""
    values = values[np.isfinite(values)]
    lo, hi = np.quantile(values, SWEEP_QUANTILES) if len(values) else (None, None)
    return sweep_range(lo, hi, current, n)


def grid_quantiles(n: int) -> np.ndarray:
    return np.linspace(0.05, 0.8, n - 1)


def grid_axis(quantiles, current: float) -> list[float]:
    return sorted({round(float(x), 3) for x in quantiles} | {round(current, 3)})


def distribution(v: np.ndarray, quantiles=None) -> dict[str, float | None]:
    """Mean, p10, median, p90, min, max of finite scored values (``quantiles``: those three, if known)."""
    if not len(v):
        return {k: None for k in ("mean", "p10", "median", "p90", "min", "max")}
    q = np.quantile(v, DISTRIBUTION_QUANTILES) if quantiles is None else quantiles
    return {"mean": _r(v.mean()), "p10": _r(q[0]), "median": _r(q[1]), "p90": _r(q[2]), "min": _r(v.min()),
            "max": _r(v.max())}


def _count_at_least(hist: np.ndarray, edges: list[float], value: float) -> int:
    """Rows at or above ``edges[j] == value``, from bin counts of searchsorted(edges, x, 'right')."""
    return int(hist[edges.index(value) + 1:].sum())


def _top_values_at_least(top: np.ndarray, value: float) -> int:
    """How many of the sorted top-k values are >= ``value``: the pairs top-k keeps there."""
    return int(len(top) - np.searchsorted(top, value, side="left"))


class RowFigures:
    """The all-row figures of the stored scores ``files`` under thresholds ``t`` and top ``max_pairs``."""

    def __init__(self, files: list[str], t: Thresholds, max_pairs: int, n_sweep: int = 21, n_grid: int = 6,
                 filesystem: Any = None):
        self.files, self.t, self.k, self.fs = files, t, max_pairs, filesystem
        self.n_sweep, self.n_grid = n_sweep, n_grid
        self.capacity = sum(pq.ParquetFile(f, filesystem=filesystem).metadata.num_rows for f in files) if files else 0
        self._metric_pass()
        self._count_pass()
        self._top_k_pass()

    # --- pass 1: per metric, the scored values in table order -----------------------------
    def _scored_values(self, metric: str) -> np.ndarray:
        buf = np.empty(self.capacity, dtype=np.float64)
        n = 0
        for f in self.files:
            table = pq.read_table(f, columns=["status", metric], filesystem=self.fs)
            v = pc.filter(table[metric], pc.equal(table["status"], "ok")).to_numpy(zero_copy_only=False)
            buf[n:n + len(v)] = v
            n += len(v)
        return buf[:n]

    def _metric_pass(self) -> None:
        self.distributions: dict[str, dict] = {}
        self.sweep_edges: dict[str, list[float]] = {}    # per threshold: its sweep values and its current value
        self.sweep_points: dict[str, list[float]] = {}
        axis_q = {}
        names = {metric: name for name, metric in THRESHOLD_METRIC.items()}
        for metric in THRESHOLD_METRIC.values():
            v = self._scored_values(metric)
            if not np.isfinite(v).all():
                v = v[np.isfinite(v)]
            name = names.get(metric)
            qs = [*DISTRIBUTION_QUANTILES, *SWEEP_QUANTILES, *(grid_quantiles(self.n_grid) if name in (GRID_ROWS, GRID_COLS) else ())]
            head = {"mean": v.mean(), "min": v.min(), "max": v.max()} if len(v) else {}
            q = np.quantile(v, qs, overwrite_input=True) if len(v) else [None] * len(qs)   # partitions in place
            self.distributions[metric] = ({"mean": _r(head["mean"]), "p10": _r(q[0]), "median": _r(q[1]),
                                           "p90": _r(q[2]), "min": _r(head["min"]), "max": _r(head["max"])}
                                          if len(v) else distribution(v))
            del v
            if name is None:
                continue
            current = getattr(self.t, name)
            self.sweep_points[name] = sweep_range(q[3], q[4], current, self.n_sweep)
            self.sweep_edges[name] = sorted(set(self.sweep_points[name]) | {current})
            if name in (GRID_ROWS, GRID_COLS):
                axis_q[name] = q[5:] if len(q) > 5 and q[5] is not None else []
        self.grid_rows = grid_axis(axis_q[GRID_ROWS], getattr(self.t, GRID_ROWS))
        self.grid_cols = grid_axis(axis_q[GRID_COLS], getattr(self.t, GRID_COLS))

    # --- pass 2: counts and histograms, one shard at a time ---------------------------------
    def _count_pass(self) -> None:
        names = list(THRESHOLD_METRIC)
        self.totals = {"candidates": 0, "scored": 0, "images_kept": 0, "passing": 0}
        self.hist_alone = {n: np.zeros(len(self.sweep_edges[n]) + 1, np.int64) for n in names}
        self.hist_all = {n: np.zeros(len(self.sweep_edges[n]) + 1, np.int64) for n in names}
        self.without = {n: 0 for n in names}   # pass every other threshold (this one off)
        nr, nc = len(self.grid_rows) + 1, len(self.grid_cols) + 1
        self.hist_grid = np.zeros(nr * nc, np.int64)
        for f in self.files:
            table = pq.read_table(f, columns=["status", "images_kept", *THRESHOLD_METRIC.values()], filesystem=self.fs)
            ok = pc.equal(table["status"], "ok").to_numpy(zero_copy_only=False)
            values = {n: table[m].to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
                      for n, m in THRESHOLD_METRIC.items()}
            ge = {n: values[n] >= getattr(self.t, n) for n in names}   # NaN compares False, as passes() does
            known = {n: ~np.isnan(values[n]) for n in names}
            passing = ok & ge[names[0]] & ge[names[1]] & ge[names[2]] & ge[names[3]]
            self.totals["candidates"] += table.num_rows
            self.totals["scored"] += int(ok.sum())
            self.totals["images_kept"] += int(pc.sum(table["images_kept"]).as_py() or 0)
            self.totals["passing"] += int(passing.sum())
            for n in names:
                others = ok.copy()
                for o in names:
                    if o != n:
                        others &= ge[o]
                edges = self.sweep_edges[n]
                self.hist_alone[n] += np.bincount(np.searchsorted(edges, values[n][ok & known[n]], "right"),
                                                  minlength=len(edges) + 1)
                self.hist_all[n] += np.bincount(np.searchsorted(edges, values[n][others & known[n]], "right"),
                                                minlength=len(edges) + 1)
                self.without[n] += int((others & known[n]).sum())
            base = ok & ge["min_sim_0"] & ge["min_sim_1"] & known[GRID_ROWS] & known[GRID_COLS]
            bi = np.searchsorted(self.grid_rows, values[GRID_ROWS][base], "right")
            bj = np.searchsorted(self.grid_cols, values[GRID_COLS][base], "right")
            self.hist_grid += np.bincount(bi * nc + bj, minlength=nr * nc)
        self.hist_grid = self.hist_grid.reshape(nr, nc)

    # --- pass 3: the k best values per triple (DuckDB) -------------------------------------
    def _top_k_pass(self) -> None:
        k = int(self.k)
        aggs = []
        for n, m in THRESHOLD_METRIC.items():   # sweeps: the k best of m among passers of the others
            aggs.append(f"max({m}, {k}) FILTER (WHERE {passes_sql(self.t, skip=n)} AND NOT isnan({m}))")
        row_m, col_m = THRESHOLD_METRIC[GRID_ROWS], THRESHOLD_METRIC[GRID_COLS]
        base = f"status = 'ok' AND {at_least('sim_0', self.t.min_sim_0)} AND {at_least('sim_1', self.t.min_sim_1)}"
        for rv in self.grid_rows:   # grid: per row value, the k best sim_image
            aggs.append(f"max({col_m}, {k}) FILTER (WHERE {base} AND {at_least(row_m, rv)} AND NOT isnan({col_m}))")
        cols = ", ".join(f"{a} AS a{i}" for i, a in enumerate(aggs))
        con = connect(self.files, self.fs)
        result = con.sql(f"SELECT {cols} FROM scores GROUP BY triple_id").to_arrow_table()
        sel = con.execute(f"SELECT count(*), count(DISTINCT triple_id), count(*) FILTER (WHERE NOT images_kept) "
                          f"FROM ({selected_sql(self.t, k, ['images_kept'])})").fetchall()[0]
        con.close()
        self.triples = result.num_rows
        self.selected, self.triples_with_pairs, self.selected_without_images = (int(x or 0) for x in sel)
        tops = [np.sort(pc.list_flatten(result[f"a{i}"]).to_numpy(zero_copy_only=False)) for i in range(len(aggs))]
        self.top_sweep = dict(zip(THRESHOLD_METRIC, tops[:4]))
        self.top_grid = tops[4:]

    # --- the figures, as Audit wrote them -----------------------------------------------------
    def summary(self) -> dict[str, int]:
        s = self.totals
        return {"candidates": s["candidates"], "scored": s["scored"], "failed": s["candidates"] - s["scored"],
                "images_kept": s["images_kept"], "passing": s["passing"], "selected": self.selected,
                "triples": self.triples, "triples_with_pairs": self.triples_with_pairs,
                "selected_without_images": self.selected_without_images}

    def sweeps(self) -> dict[str, list[dict[str, float]]]:
        """Per threshold: pass rate of it alone, pass rate of all, pairs kept, as it moves."""
        scored = max(1, self.totals["scored"])
        out = {}
        for name in THRESHOLD_METRIC:
            edges = self.sweep_edges[name]
            out[name] = [{"value": v,
                          "pass_rate_alone": _r(_count_at_least(self.hist_alone[name], edges, v) / scored),
                          "pass_rate": _r(_count_at_least(self.hist_all[name], edges, v) / scored),
                          "pairs_kept": _top_values_at_least(self.top_sweep[name], v)}
                         for v in self.sweep_points[name]]
        return out

    def marginal(self) -> dict[str, dict[str, int]]:
        """What each threshold does on top of the others."""
        out = {}
        for name in THRESHOLD_METRIC:
            kept_without = len(self.top_sweep[name])   # the threshold off: every one of the k best stays
            out[name] = {"pairs_kept": self.selected, "pairs_kept_without": kept_without,
                         "removed_only_by_this": self.without[name] - self.totals["passing"],
                         "pairs_removed": kept_without - self.selected}
        return out

    def grid(self) -> dict[str, Any]:
        """Pairs kept and pass rate over a grid of (min_direction, min_image)."""
        scored = max(1, self.totals["scored"])
        # cell (i, j) counts rows at or above row value i and column value j: bins i+1.. and j+1..
        at_least_both = self.hist_grid[::-1, ::-1].cumsum(0).cumsum(1)[::-1, ::-1]
        kept = [[_top_values_at_least(self.top_grid[i], cv) for cv in self.grid_cols] for i in range(len(self.grid_rows))]
        rate = [[_r(int(at_least_both[i + 1, j + 1]) / scored, 4) for j in range(len(self.grid_cols))]
                for i in range(len(self.grid_rows))]
        return {"rows": GRID_ROWS, "cols": GRID_COLS, "row_values": self.grid_rows, "col_values": self.grid_cols,
                "pairs_kept": kept, "pass_rate": rate}
