"""The audit's figures over every stored row, computed without holding the scores table.

Counts, distributions, threshold sweeps, marginal effects and the min_direction x min_image
grid are exact over all candidates, at any scale, in bounded memory:
  - distributions: one metric at a time, the scored values of all shards in one float array
    (45M candidates: 360 MB), in table order, so mean and quantiles are numpy's on the table;
  - pass counts: one streaming pass over the shards that histograms each metric against the
    sweep values (a candidate passes ``value`` iff it falls in a bin at or above it);
  - pairs kept: top-k per triple keeps min(k, passers) pairs, whatever the order, so the
    same pass counts per triple (bin counts of each swept metric among the candidates passing
    the other thresholds; 2-D bins for the grid) give pairs kept at every point: 45M rows
    become 450K triples x ~150 bins of int32 (270 MB).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .score_query import connect, selected_sql
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


class RowFigures:
    """The all-row figures of the stored scores ``files`` under thresholds ``t`` and top ``max_pairs``."""

    def __init__(self, files: list[str], t: Thresholds, max_pairs: int, n_sweep: int = 21, n_grid: int = 6,
                 filesystem: Any = None, selection: pa.Table | None = None):
        self.files, self.t, self.k, self.fs = files, t, max_pairs, filesystem
        self.n_sweep, self.n_grid = n_sweep, n_grid
        self.capacity = sum(pq.ParquetFile(f, filesystem=filesystem).metadata.num_rows for f in files) if files else 0
        self._metric_pass()
        self._count_pass()
        self._selected_without_images(selection)

    def _read(self, f: str, columns: list[str]) -> pa.Table:
        return pq.read_table(f, columns=columns, filesystem=self.fs)

    # --- pass 1: per metric, the scored values in table order -----------------------------
    def _scored_values(self, metric: str) -> np.ndarray:
        buf = np.empty(self.capacity, dtype=np.float64)
        n = 0
        for i, f in enumerate(self.files):
            if self._ok[i] is None:
                self._ok[i] = pc.equal(self._read(f, ["status"])["status"], "ok").to_numpy(zero_copy_only=False)
            v = self._read(f, [metric])[metric].to_numpy(zero_copy_only=False)[self._ok[i]]
            buf[n:n + len(v)] = v
            n += len(v)
        return buf[:n]

    def _metric_pass(self) -> None:
        self._ok: list[np.ndarray | None] = [None] * len(self.files)   # status == ok, per shard (1 byte a row)
        self.distributions: dict[str, dict] = {}
        self.sweep_edges: dict[str, list[float]] = {}    # per threshold: its sweep values and its current value
        self.sweep_points: dict[str, list[float]] = {}
        axis_q = {}
        for name, metric in THRESHOLD_METRIC.items():
            v = self._scored_values(metric)
            if not np.isfinite(v).all():
                v = v[np.isfinite(v)]
            qs = [*DISTRIBUTION_QUANTILES, *SWEEP_QUANTILES,
                  *(grid_quantiles(self.n_grid) if name in (GRID_ROWS, GRID_COLS) else ())]
            head = {"mean": v.mean(), "min": v.min(), "max": v.max()} if len(v) else {}
            q = np.quantile(v, qs, overwrite_input=True) if len(v) else [None] * len(qs)   # partitions in place
            self.distributions[metric] = ({"mean": _r(head["mean"]), "p10": _r(q[0]), "median": _r(q[1]),
                                           "p90": _r(q[2]), "min": _r(head["min"]), "max": _r(head["max"])}
                                          if len(v) else distribution(v))
            del v
            current = getattr(self.t, name)
            self.sweep_points[name] = sweep_range(q[3], q[4], current, self.n_sweep)
            self.sweep_edges[name] = sorted(set(self.sweep_points[name]) | {current})
            if name in (GRID_ROWS, GRID_COLS):
                axis_q[name] = q[5:] if q[0] is not None else []
        self.grid_rows = grid_axis(axis_q[GRID_ROWS], getattr(self.t, GRID_ROWS))
        self.grid_cols = grid_axis(axis_q[GRID_COLS], getattr(self.t, GRID_COLS))

    # --- pass 2: counts and per-triple histograms, one shard at a time ----------------------
    def _count_pass(self) -> None:
        """Bin counts per triple: for each sweep, of its metric among the candidates passing the
        other thresholds; for the grid, of (sim_direction, sim_image) among those passing sim_0
        and sim_1. Pairs kept at any point are then sums of min(k, count at or above it)."""
        names = list(THRESHOLD_METRIC)
        self.totals = {"candidates": 0, "scored": 0, "images_kept": 0, "passing": 0}
        self.hist_alone = {n: np.zeros(len(self.sweep_edges[n]) + 1, np.int64) for n in names}
        self.without = {n: 0 for n in names}   # pass every other threshold (this one off)
        widths = [len(self.sweep_edges[n]) + 1 for n in names] + [(len(self.grid_rows) + 1) * (len(self.grid_cols) + 1)]
        self.blocks = dict(zip([*names, "grid"], np.cumsum([0, *widths[:-1]])))
        width = int(sum(widths))
        per_triple = np.zeros((1024, width), np.int32)
        codes: dict[str, int] = {}
        for i, f in enumerate(self.files):
            table = self._read(f, ["triple_id", "images_kept", *THRESHOLD_METRIC.values()])
            ok = self._ok[i]
            values = {n: table[m].to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
                      for n, m in THRESHOLD_METRIC.items()}
            ge = {n: values[n] >= getattr(self.t, n) for n in names}   # NaN compares False, as passes() does
            known = {n: ~np.isnan(values[n]) for n in names}
            passing = ok & ge[names[0]] & ge[names[1]] & ge[names[2]] & ge[names[3]]
            self.totals["candidates"] += table.num_rows
            self.totals["scored"] += int(ok.sum())
            self.totals["images_kept"] += int(pc.sum(table["images_kept"]).as_py() or 0)
            self.totals["passing"] += int(passing.sum())
            uniques = pc.unique(table["triple_id"])
            local = pc.index_in(table["triple_id"], value_set=uniques).to_numpy()
            rows, cols = [], []
            for n in names:
                others = ok.copy()
                for o in names:
                    if o != n:
                        others &= ge[o]
                edges = self.sweep_edges[n]
                self.hist_alone[n] += np.bincount(np.searchsorted(edges, values[n][ok & known[n]], "right"),
                                                  minlength=len(edges) + 1)
                use = others & known[n]
                self.without[n] += int(use.sum())
                rows.append(local[use])
                cols.append(self.blocks[n] + np.searchsorted(edges, values[n][use], "right"))
            use = ok & ge["min_sim_0"] & ge["min_sim_1"] & known[GRID_ROWS] & known[GRID_COLS]
            bi = np.searchsorted(self.grid_rows, values[GRID_ROWS][use], "right")
            bj = np.searchsorted(self.grid_cols, values[GRID_COLS][use], "right")
            rows.append(local[use])
            cols.append(self.blocks["grid"] + bi * (len(self.grid_cols) + 1) + bj)
            shard = np.bincount(np.concatenate(rows) * width + np.concatenate(cols),
                                minlength=len(uniques) * width).reshape(len(uniques), width)
            code = np.array([codes.setdefault(t, len(codes)) for t in uniques.to_pylist()], dtype=np.int64)
            if len(codes) > len(per_triple):   # grow by doubling: the triple count is known only at the end
                more = max(len(codes), 2 * len(per_triple)) - len(per_triple)
                per_triple = np.concatenate([per_triple, np.zeros((more, width), np.int32)])
            per_triple[code] += shard.astype(np.int32)   # codes are unique within a shard
        self._ok = None
        self.triples = len(codes)
        self.per_triple = per_triple[:len(codes)]

    def _at_least(self, name: str) -> np.ndarray:
        """(triples, edges + 1): per triple, candidates at or above each bin of the sweep of ``name``."""
        o = self.blocks[name]
        block = self.per_triple[:, o:o + len(self.sweep_edges[name]) + 1]
        return block[:, ::-1].cumsum(1, dtype=np.int64)[:, ::-1]

    def _pairs_kept(self, at_least: np.ndarray) -> np.ndarray:
        return np.minimum(at_least, self.k).sum(0)

    def _selected_without_images(self, selection: pa.Table | None) -> None:
        at_least = self._at_least(GRID_ROWS)
        j = self.sweep_edges[GRID_ROWS].index(self.t.min_direction) + 1
        self.selected = int(self._pairs_kept(at_least)[j])
        self.triples_with_pairs = int((at_least[:, j] > 0).sum())
        # Which pairs, not how many, decides this one: the stored selection of these thresholds
        # says it, if it is the one computed here; else the window query.
        if (selection is not None and selection.num_rows == self.selected
                and pc.count_distinct(selection["triple_id"]).as_py() == self.triples_with_pairs):
            self.selected_without_images = selection.num_rows - int(pc.sum(selection["images_kept"]).as_py() or 0)
            return
        con = connect(self.files, self.fs)
        sql = f"SELECT count(*) FILTER (WHERE NOT images_kept) FROM ({selected_sql(self.t, self.k, ['images_kept'])})"
        self.selected_without_images = int(con.execute(sql).fetchall()[0][0] or 0)
        con.close()

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
            at_least = self._at_least(name)
            passers, kept = at_least.sum(0), self._pairs_kept(at_least)
            out[name] = [{"value": v,
                          "pass_rate_alone": _r(_count_at_least(self.hist_alone[name], edges, v) / scored),
                          "pass_rate": _r(int(passers[edges.index(v) + 1]) / scored),
                          "pairs_kept": int(kept[edges.index(v) + 1])}
                         for v in self.sweep_points[name]]
        return out

    def marginal(self) -> dict[str, dict[str, int]]:
        """What each threshold does on top of the others."""
        out = {}
        for name in THRESHOLD_METRIC:
            kept_without = int(self._pairs_kept(self._at_least(name))[0])   # bin 0 and up: every known value
            out[name] = {"pairs_kept": self.selected, "pairs_kept_without": kept_without,
                         "removed_only_by_this": self.without[name] - self.totals["passing"],
                         "pairs_removed": kept_without - self.selected}
        return out

    def grid(self) -> dict[str, Any]:
        """Pairs kept and pass rate over a grid of (min_direction, min_image)."""
        scored = max(1, self.totals["scored"])
        nr, nc = len(self.grid_rows) + 1, len(self.grid_cols) + 1
        o = self.blocks["grid"]
        cells = self.per_triple[:, o:o + nr * nc].reshape(-1, nr, nc)
        # per triple, candidates at or above row value i and column value j: bins i+1.. and j+1..
        at_least = cells[:, ::-1, ::-1].cumsum(1, dtype=np.int64).cumsum(2)[:, ::-1, ::-1]
        kept = np.minimum(at_least, self.k).sum(0)
        passers = at_least.sum(0)
        return {"rows": GRID_ROWS, "cols": GRID_COLS, "row_values": self.grid_rows, "col_values": self.grid_cols,
                "pairs_kept": [[int(kept[i + 1, j + 1]) for j in range(nc - 1)] for i in range(nr - 1)],
                "pass_rate": [[_r(int(passers[i + 1, j + 1]) / scored, 4) for j in range(nc - 1)]
                              for i in range(nr - 1)]}
