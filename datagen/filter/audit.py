"""The threshold audit of a run: every figure the report shows, computed from stored scores.

``audit_run`` reads the filter shards (never the GPU), computes the numbers below into
``report/audit.json``, renders ``report/audit.html`` (audit_html.py) and, when shapes-world
oracle judgements exist, updates ``report/oracle.json``:
  - summary counts and per-metric distributions; failures by reason;
  - threshold sweeps: pass rate and pairs kept as each threshold moves, the others fixed;
  - the marginal effect of each threshold (pairs it alone removes);
  - a min_direction x min_image grid of pairs kept;
  - breakdowns by edit kind and by the instruction's first word;
  - against each label source (human labels file, shapes oracle): precision, recall and F1
    of the filter per setting, the best-F1 setting and the best setting at a target precision.
"""
from __future__ import annotations

import itertools
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from datagen.config import load_run_config
from datagen.preview_calibration import preview_report
from datagen.store import RunStore

from .audit_rows import OFF, RowFigures, _r, sweep_values
from .labels import DEFAULT_LABELS, load_labels
from .oracle import ORACLE_FILE, oracle_summary, write_oracle_json
from .score_query import connect, score_files
from .selection import THRESHOLD_METRIC, Selector, Thresholds
from .table import SELECTION_FILE, STAGE, read_oracle, read_scores, read_selection_info

log = logging.getLogger(__name__)

def _thresholds_in_effect(cfg, store: RunStore) -> tuple[Thresholds, int, list[str]]:
    """The thresholds of the current selection (refilter may have changed them), else the config's."""
    info = read_selection_info(store)
    if info.get("thresholds"):
        return Thresholds(**info["thresholds"]), int(info["max_pairs_per_triple"]), info.get("overrides", [])
    return Thresholds.from_config(cfg.filter), cfg.filter.max_pairs_per_triple, []


def read_sample(store: RunStore, max_rows: int, seed: int = 0) -> pd.DataFrame:
    """Scores of whole filter shards drawn at random until about ``max_rows`` rows (all of them if
    fewer). A shard holds every candidate of its triples, so top-k on the sample is the run's."""
    shards = store.done_shards(STAGE)
    names = {s: store.shard_name(STAGE, s, "parquet") for s in shards}
    sizes = {s: store.parquet_file(n).metadata.num_rows if store.exists(n) else 0 for s, n in names.items()}
    if sum(sizes.values()) <= max_rows:
        return read_scores(store)
    chosen, rows = [], 0
    for s in np.random.default_rng(seed).permutation(shards):
        if chosen and rows + sizes[s] > max_rows:
            break
        chosen.append(int(s))
        rows += sizes[s]
    return sample_by_triple(read_scores(store, shards=sorted(chosen)), max_rows, seed)


def with_labelled_triples(store: RunStore, sample: pd.DataFrame, candidate_ids) -> pd.DataFrame:
    """The sample plus every triple holding a labelled candidate: figures against labels then use
    every label, not the few that fall in the sample (top-k needs the labelled candidate's triple)."""
    missing = pa.table({"candidate_id": sorted(set(candidate_ids) - set(sample["candidate_id"]))})
    if not missing.num_rows:
        return sample
    con = connect(score_files(store), store.filesystem)
    con.register("labelled", missing)
    extra = con.sql("SELECT * FROM scores WHERE triple_id IN (SELECT triple_id FROM scores WHERE candidate_id IN "
                    "(SELECT candidate_id FROM labelled))").to_arrow_table().to_pandas()
    con.close()
    extra = extra[~extra["triple_id"].isin(set(sample["triple_id"]))]
    return pd.concat([sample, extra[sample.columns]], ignore_index=True)


def sample_by_triple(scores: pd.DataFrame, max_rows: int, seed: int = 0) -> pd.DataFrame:
    """Whole triples at random until about ``max_rows`` rows (top-k needs whole triples)."""
    if len(scores) <= max_rows:
        return scores
    triples = scores["triple_id"].unique()
    rng = np.random.default_rng(seed)
    per_triple = len(scores) / len(triples)
    keep = set(rng.choice(triples, size=max(1, int(max_rows / per_triple)), replace=False))
    return scores[scores["triple_id"].isin(keep)].reset_index(drop=True)


def instruction_keyword(instruction: str) -> str:
    words = re.findall(r"[a-z']+", str(instruction).lower())
    return words[0] if words else "(none)"


def prf(pred: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    tp = int((pred & truth).sum())
    p = tp / pred.sum() if pred.sum() else None
    r = tp / truth.sum() if truth.sum() else None
    f1 = 2 * p * r / (p + r) if p and r else (0.0 if p is not None and r is not None else None)
    return {"selected": int(pred.sum()), "precision": _r(p), "recall": _r(r), "f1": _r(f1)}


class Audit:
    """The audit numbers of one in-memory scores table (a sample of whole triples) under one setting."""

    def __init__(self, scores: pd.DataFrame, t: Thresholds, max_pairs: int, keep: Thresholds | None = None):
        self.scores, self.t, self.k, self.keep = scores, t, max_pairs, keep
        self.selector = Selector(scores)
        self.ok = np.asarray(scores["status"] == "ok", dtype=bool)
        self.values = {m: scores[m].to_numpy(dtype=float) for m in THRESHOLD_METRIC.values()}
        self.passing = self.passes(t)
        self.selected = self.selector.select(t, max_pairs, self.passing)

    def passes(self, t: Thresholds) -> np.ndarray:
        """selection.passes() on cached columns (the label grid calls it a thousand times)."""
        mask = self.ok.copy()
        for name, metric in THRESHOLD_METRIC.items():
            mask &= self.values[metric] >= getattr(t, name)
        return mask

    def select(self, t: Thresholds) -> np.ndarray:
        return self.selector.select(t, self.k, self.passes(t))

    def breakdown(self, by: pd.Series, correct: pd.Series | None = None) -> list[dict[str, Any]]:
        df = self.scores.assign(_group=by.to_numpy(), _pass=self.passing, _sel=self.selected, _ok=self.ok)
        if correct is not None:
            df = df.assign(_correct=df["candidate_id"].map(correct))
        out = []
        for group, g in df.groupby("_group", sort=True):
            scored = int(g["_ok"].sum())
            row = {"group": str(group) or "(none)", "candidates": int(len(g)), "scored": scored,
                   "pass_rate": _r(g["_pass"].sum() / scored, 4) if scored else None,
                   "selected": int(g["_sel"].sum()),
                   **{f"mean_{m}": _r(g.loc[g["_ok"], m].mean(), 4) for m in THRESHOLD_METRIC.values()}}
            if correct is not None:
                lab = g.dropna(subset=["_correct"])
                row["correct_rate"] = _r(lab["_correct"].astype(bool).mean(), 4) if len(lab) else None
                sel = lab[lab["_sel"]]
                row["correct_rate_kept"] = _r(sel["_correct"].astype(bool).mean(), 4) if len(sel) else None
            out.append(row)
        return out

    def against_labels(self, labels: pd.Series, target_precision: float, n_sweep: int = 21,
                       grid_quantiles=(0.1, 0.25, 0.5, 0.75, 0.9)) -> dict[str, Any]:
        """Precision/recall/F1 of the filter against ``labels`` (True = good) per setting."""
        idx = self.scores["candidate_id"].map(labels)
        has = idx.notna().to_numpy()
        truth = idx[has].astype(bool).to_numpy()
        out: dict[str, Any] = {"labelled": int(has.sum()), "positives": int(truth.sum()),
                               "current": prf(self.selected[has], truth), "target_precision": target_precision}
        # Candidate settings: the current one, each sweep, and a joint grid where each threshold
        # is off or at a quantile of its metric; best F1 and best-at-target come from all of them.
        settings = [{"thresholds": self.t.as_dict(), **out["current"]}]
        out["sweeps"] = {}
        for name, metric in THRESHOLD_METRIC.items():
            rows = []
            for v in sweep_values(self.values[metric][self.ok], getattr(self.t, name), n_sweep):
                t = self.t.replace(**{name: v})
                rows.append({"value": v, **prf(self.select(t)[has], truth)})
                settings.append({"thresholds": t.as_dict(), **{k: rows[-1][k] for k in ("selected", "precision", "recall", "f1")}})
            out["sweeps"][name] = rows
        axes = {name: [OFF] + sorted({round(float(q), 4) for q in np.quantile(self.values[m][self.ok], grid_quantiles)})
                for name, m in THRESHOLD_METRIC.items()} if self.ok.any() else {n: [OFF] for n in THRESHOLD_METRIC}
        for combo in itertools.product(*axes.values()):
            t = Thresholds(**dict(zip(axes, combo)))
            settings.append({"thresholds": {k: (None if v == OFF else v) for k, v in t.as_dict().items()},
                             **prf(self.select(t)[has], truth)})
        out["settings_searched"] = len(settings)
        scored = [s for s in settings if s["f1"] is not None]
        out["best_f1"] = max(scored, key=lambda s: (s["f1"], s["precision"] or 0)) if scored else None
        meeting = [s for s in settings if s["precision"] is not None and s["precision"] >= target_precision]
        out["at_target_precision"] = max(meeting, key=lambda s: (s["recall"] or 0, s["selected"])) if meeting else None
        return out


def label_sources(store: RunStore, labels_path: str | Path | None) -> dict[str, pd.Series]:
    """Label Series by source name: the human labels file (if any) and the shapes oracle (if any)."""
    sources = {}
    if labels_path or store.exists(DEFAULT_LABELS):
        sources["human"] = load_labels(labels_path or store.url(DEFAULT_LABELS))
    judged = read_oracle(store)
    if judged is not None:
        sources["oracle"] = judged.set_index("candidate_id")["correct"].astype(bool)
    return sources


def audit_run(run: str | Path, labels_path: str | Path | None = None, target_precision: float = 0.9,
              max_rows: int = 200_000, images_per_side: int = 6, seed: int = 0) -> dict[str, Any]:
    """Compute the audit of ``run``, write report/audit.json + audit.html (+ oracle.json).

    Counts, distributions, sweeps, marginal effects and the grid are over every stored row;
    breakdowns, figures against labels, histograms and images over a sample of whole shards
    of about ``max_rows`` rows (every row below that).
    """
    import json

    from .audit_html import render_report

    store = RunStore(run)
    if not store.done_shards(STAGE):
        from .table import RunError

        raise RunError(f"{store.url('filter')} has no done shards: run the filter stage first")
    cfg = load_run_config(run)
    t, k, overrides = _thresholds_in_effect(cfg, store)
    keep = Thresholds.keep_bound(cfg.filter)
    sel = f"{STAGE}/{SELECTION_FILE}"    # the stored selection of these thresholds, if any
    stored = (store.read_arrow(sel, columns=["triple_id", "images_kept"])
              if read_selection_info(store) and store.exists(sel) else None)
    rows = RowFigures(score_files(store), t, k, filesystem=store.filesystem,
                      selection=stored)   # over every row, never held whole
    scores = read_sample(store, max_rows, seed)    # what the report draws and shows per item
    sources = label_sources(store, labels_path)
    if "human" in sources and len(scores) < rows.totals["candidates"]:
        scores = with_labelled_triples(store, scores, sources["human"].index)
    audit = Audit(scores, t, k, keep)
    oracle_labels = sources.get("oracle")

    failures: dict[str, int] = {}
    shard_errors = []
    for st in store.read_stats(STAGE):
        for reason, n in st.rejections.items():
            failures[reason] = failures.get(reason, 0) + n
        if st.extra.get("shard_error"):
            shard_errors.append({"shard": st.shard, "error": st.extra["shard_error"]})
    correct_for_breakdown = sources.get("oracle", sources.get("human"))
    numbers: dict[str, Any] = {
        "run": store.location, "thresholds": t.as_dict(), "max_pairs_per_triple": k, "keep_bound": keep.as_dict(),
        "overrides": overrides, "clip_model": cfg.filter.clip_model,
        "rows_total": rows.totals["candidates"], "rows_used": int(len(scores)),
        "sampled": len(scores) < rows.totals["candidates"],
        "summary": rows.summary(), "metrics": rows.distributions, "failures": failures,
        "shard_errors": shard_errors, "sweeps": rows.sweeps(), "marginal": rows.marginal(), "grid": rows.grid(),
        "breakdown": {
            "edit_kind": audit.breakdown(scores["edit_kind"].fillna(""), correct_for_breakdown),
            "keyword": audit.breakdown(scores["instruction"].map(instruction_keyword), correct_for_breakdown)},
        "labels": {name: audit.against_labels(lab, target_precision) for name, lab in sources.items()},
    }
    previews = preview_report(run)       # render.preview: preview vs final scores, the stop rule's recall
    if previews is not None:
        numbers["previews"] = previews
    if oracle_labels is not None:
        judged = read_oracle(store)
        values = oracle_summary(scores, judged, audit.selected)
        write_oracle_json(store.location, values)
        # The merged file: it also holds what other tools measured (p2p_modes, model figures).
        numbers["oracle"] = json.loads(store.read_text(f"report/{ORACLE_FILE}"))
        numbers["oracle_file"] = store.url(f"report/{ORACLE_FILE}")
    store.write_text("report/audit.json", json.dumps(numbers, indent=1, sort_keys=True, default=str))
    html = render_report(store, audit, numbers, sources, images_per_side)
    numbers["html"] = store.write_text("report/audit.html", html)
    log.info("audit of %s: %s", run, numbers["html"])
    return numbers
