"""The preview stop rule against a stored run: its calibration rows, and previews vs final scores.

A calibration run renders with ``render.preview`` and no rule, so every candidate has a preview
(render tables: ``preview_sim_*``) and final scores (filter score tables). Its label is "would be
kept": the final scores pass every filter threshold (plus ``margin``, as the waves count passes).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from datagen.config import load_run_config
from datagen.preview_rule import FEATURES, PreviewRule, fit_rule, rule_metrics
from datagen.store import RunStore
from datagen.waves import shortfall

SCORES_STAGE = "filter"   # read from the store, never imported: stages meet only there


def calibration_rows(run: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[np.ndarray, np.ndarray, dict]:
    """(previews (N, 4), would-be-kept labels (N,), the run's settings) of every candidate with both."""
    cfg = load_run_config(run, overrides)
    if cfg.render.preview is None:
        raise ValueError(f"run {run} rendered without previews (render.preview): nothing to calibrate on")
    store = RunStore(run)
    shards = sorted(set(store.done_shards("render")) & set(store.done_shards(SCORES_STAGE)))
    if not shards:
        raise ValueError(f"run {run} has no shard both rendered and scored")
    margin = cfg.render.waves.margin if cfg.render.waves else 0.0
    x, kept = [], []
    for shard in shards:
        finals = {r["candidate_id"]: r for r in store.read_table(SCORES_STAGE, shard) if r["status"] == "ok"}
        for r in store.read_table("render", shard):
            if r["status"] == "stopped":
                raise ValueError(f"run {run} stopped candidates at their preview (a rule was set): their final scores "
                                 "are unknown, so it cannot calibrate a rule; render one with render.preview.rule=''")
            f = finals.get(r["candidate_id"])
            if f is None or r.get("preview_sim_0") is None:
                continue
            x.append([r[f"preview_{m}"] for m in FEATURES])
            kept.append(shortfall(f, cfg.filter) <= -margin)   # a pass as the waves count it
    settings = {"fraction": cfg.render.preview.fraction, "steps": cfg.render.steps, "shards": len(shards)}
    return np.array(x, dtype=float).reshape(-1, len(FEATURES)), np.array(kept, dtype=bool), settings


def calibrate(run: str | Path, target_recall: float, kind: str = "logistic",
              overrides: list[str] | tuple[str, ...] = ()) -> PreviewRule:
    x, kept, settings = calibration_rows(run, overrides)
    rule = fit_rule(x, kept, target_recall, settings["fraction"], settings["steps"], kind, source=str(run))
    rule.calibration.update(rule_metrics(rule, x, kept))
    rule.calibration["overrides"] = list(overrides)   # the labels' thresholds, to measure the rule again alike
    return rule


def preview_report(run: str | Path) -> dict | None:
    """Preview vs final scores of a run (None: no previews): per metric, the correlation and mean gap
    over the candidates with both; how many were stopped; and the stop rule's recall of would-be-kept
    candidates: measured here for a rule calibrated on this run (report/preview_rule.json), as
    calibrated for the rule the run rendered with (its stopped candidates have no final scores)."""
    from datagen.preview_rule import load_rule

    cfg = load_run_config(run)
    if cfg.render.preview is None:
        return None
    store = RunStore(run)
    pairs = {m: ([], []) for m in FEATURES}
    stopped = previewed = 0
    for shard in sorted(set(store.done_shards("render")) & set(store.done_shards(SCORES_STAGE))):
        finals = {r["candidate_id"]: r for r in store.read_table(SCORES_STAGE, shard) if r["status"] == "ok"}
        for r in store.read_table("render", shard):
            stopped += r["status"] == "stopped"
            previewed += r.get("preview_sim_0") is not None
            f = finals.get(r["candidate_id"])
            if f is not None and r.get("preview_sim_0") is not None:
                for m in FEATURES:
                    pairs[m][0].append(r[f"preview_{m}"])
                    pairs[m][1].append(f[m])
    out = {"preview_fraction": cfg.render.preview.fraction, "previewed": previewed, "stopped": stopped,
           "with_final_scores": len(pairs[FEATURES[0]][0])}
    for m, (p, f) in pairs.items():
        if len(p) > 1:
            out[m] = {"correlation": round(float(np.corrcoef(p, f)[0, 1]), 4),
                      "mean_final_minus_preview": round(float(np.mean(np.subtract(f, p))), 4),
                      "by_preview_decile": preview_bins(np.asarray(p), np.asarray(f))}
    store = RunStore(run)
    rendered_with, calibrated_here = store.url("preview_rule.json"), store.url("report/preview_rule.json")
    if store.exists("preview_rule.json"):
        rule = load_rule(rendered_with)
        out["rule"] = {"file": str(rendered_with), "kind": rule.kind, "target_recall": rule.target_recall,
                       "measured_on": "its calibration run", **rule.calibration}
    elif store.exists("report/preview_rule.json") and stopped == 0:
        rule = load_rule(calibrated_here)
        x, kept, _ = calibration_rows(run, rule.calibration.get("overrides", []))
        out["rule"] = {"file": str(calibrated_here), "kind": rule.kind, "target_recall": rule.target_recall,
                       "measured_on": "this run", **rule_metrics(rule, x, kept)}
    return out


def preview_bins(preview: np.ndarray, final: np.ndarray, bins: int = 10) -> list[dict]:
    """Candidates in ``bins`` equal-count bins of their preview score: each bin's mean preview and
    final score and its range of finals (p10, p90), for the audit's plot of what a preview predicts."""
    order = np.argsort(preview, kind="stable")
    out = []
    for part in np.array_split(order, min(bins, len(order))):
        f = final[part]
        out.append({"n": int(len(part)), "preview_mean": round(float(preview[part].mean()), 4),
                    "final_mean": round(float(f.mean()), 4), "final_p10": round(float(np.quantile(f, 0.1)), 4),
                    "final_p90": round(float(np.quantile(f, 0.9)), 4)})
    return out
