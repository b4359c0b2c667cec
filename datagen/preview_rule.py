"""The preview stop rule: which half-denoised candidates to stop, calibrated on a stored full run.

A preview is the four CLIP metrics of a candidate's x0 prediction after a fraction of the steps
(Stage 2, ``render.preview``). Calibration takes rows of (preview metrics, would-be-kept label:
the final images pass the filter) from a run where nothing was stopped, and chooses, for a target
recall of the would-be-kept candidates,
- ``logistic``: a logistic model of the label on the standardised metrics, and the lowest
  probability it lets through; or
- ``threshold``: one lower bound per metric, each the same quantile of the positives' previews.
The rule is saved as JSON (with what it was calibrated on) and Stage 2 reuses it as saved.
Pure numpy; a preview with a non-finite metric is never stopped (nothing to judge it by).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FEATURES = ("sim_0", "sim_1", "sim_image", "sim_direction")
KINDS = ("logistic", "threshold")


@dataclass
class PreviewRule:
    kind: str                                   # logistic | threshold
    target_recall: float
    fraction: float                             # of the steps, where the previews were taken ...
    steps: int                                  # ... and at how many steps: the rule holds only there
    features: list[str] = field(default_factory=lambda: list(FEATURES))
    mean: list[float] = field(default_factory=list)      # logistic: standardisation
    scale: list[float] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    bias: float = 0.0
    threshold: float = 0.0                      # logistic: stop below this probability
    bounds: dict[str, float] = field(default_factory=dict)   # threshold: stop below any bound
    calibration: dict[str, Any] = field(default_factory=dict)  # rows, positives, recall, stop rates, source

    def probability(self, x: np.ndarray) -> np.ndarray:
        """Logistic rules: P(would be kept) of each row of ``x`` (N, features)."""
        z = ((x - np.asarray(self.mean)) / np.asarray(self.scale)) @ np.asarray(self.weights) + self.bias
        return 1.0 / (1.0 + np.exp(-z))

    def keep(self, x: np.ndarray) -> np.ndarray:
        """Boolean (N,): the candidates to go on rendering; False = stop."""
        x = np.atleast_2d(np.asarray(x, dtype=float))
        unknown = ~np.isfinite(x).all(axis=1)
        if self.kind == "logistic":
            ok = self.probability(np.nan_to_num(x)) >= self.threshold
        else:
            ok = np.ones(len(x), dtype=bool)
            for j, name in enumerate(self.features):
                ok &= x[:, j] >= self.bounds[name]
        return ok | unknown

    def check_matches(self, fraction: float, steps: int) -> None:
        """A rule calibrated on previews at another point of denoising predicts nothing here."""
        if abs(fraction - self.fraction) > 1e-9 or steps != self.steps:
            raise ValueError(f"the preview rule was calibrated on previews at fraction {self.fraction} of "
                             f"{self.steps} steps; this render previews at fraction {fraction} of {steps} steps: "
                             "calibrate a rule on a run with these settings (editsynth preview-rule)")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)


def save_rule(rule: PreviewRule, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(rule.to_json())
    tmp.replace(path)
    return path


def load_rule(path: str | Path) -> PreviewRule:
    """The rule at ``path``: a local file or a URI (a run on an object store keeps its copy there)."""
    import fsspec

    try:
        with fsspec.open(str(path), "r") as f:
            data = json.loads(f.read())
        rule = PreviewRule(**data)
    except FileNotFoundError:
        raise FileNotFoundError(f"preview rule {path} not found: write one with editsynth preview-rule") from None
    except (json.JSONDecodeError, TypeError) as e:
        raise ValueError(f"{path} is not a preview rule written by editsynth preview-rule: {e}") from None
    if rule.kind not in KINDS:
        raise ValueError(f"{path}: unknown rule kind {rule.kind!r} (known: {', '.join(KINDS)})")
    return rule


# --- calibration ---------------------------------------------------------------------------
def _fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, iterations: int = 50) -> tuple[np.ndarray, float]:
    """Weights and bias of an L2-regularised logistic regression (Newton's method; x standardised)."""
    n, d = x.shape
    a = np.hstack([x, np.ones((n, 1))])
    w = np.zeros(d + 1)
    reg = np.full(d + 1, l2)
    reg[-1] = 0.0   # the bias is not shrunk
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(a @ w)))
        grad = a.T @ (p - y) / n + reg * w
        hess = (a * (p * (1 - p))[:, None]).T @ a / n + np.diag(reg)
        step = np.linalg.solve(hess + 1e-9 * np.eye(d + 1), grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w[:-1], float(w[-1])


def _threshold_for_recall(scores: np.ndarray, target_recall: float) -> float:
    """The largest cut t with (scores >= t).mean() >= target_recall (scores of the positives)."""
    s = np.sort(scores)[::-1]
    need = int(np.ceil(target_recall * len(s)))
    return float(s[max(need, 1) - 1])


def fit_rule(x: np.ndarray, kept: np.ndarray, target_recall: float, fraction: float, steps: int,
             kind: str = "logistic", source: str = "") -> PreviewRule:
    """Calibrate a stop rule on rows ``x`` (N, 4 preview metrics, FEATURES order) and ``kept`` (N,)
    labels, so that at least ``target_recall`` of the kept candidates are let through."""
    if kind not in KINDS:
        raise ValueError(f"unknown rule kind {kind!r} (known: {', '.join(KINDS)})")
    if not 0 < target_recall <= 1:
        raise ValueError(f"target recall must lie in (0, 1], got {target_recall}")
    x, kept = np.asarray(x, dtype=float), np.asarray(kept, dtype=bool)
    usable = np.isfinite(x).all(axis=1)
    x, kept = x[usable], kept[usable]
    if kept.sum() < 2 or (~kept).sum() < 2:
        raise ValueError(f"calibration needs at least 2 kept and 2 rejected candidates with previews; "
                         f"got {int(kept.sum())} kept of {len(kept)}: render a larger calibration run")
    rule = PreviewRule(kind=kind, target_recall=target_recall, fraction=fraction, steps=steps)
    if kind == "logistic":
        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale[scale == 0] = 1.0
        w, b = _fit_logistic((x - mean) / scale, kept.astype(float))
        rule.mean, rule.scale, rule.weights, rule.bias = mean.tolist(), scale.tolist(), w.tolist(), b
        rule.threshold = _threshold_for_recall(rule.probability(x[kept]), target_recall)
    else:
        # The same quantile q of the positives' previews on every metric: the largest q that keeps the recall.
        lo, hi = 0.0, 1.0 - target_recall
        for _ in range(40):
            q = (lo + hi) / 2
            rule.bounds = {n: float(np.quantile(x[kept, j], q)) for j, n in enumerate(FEATURES)}
            if rule.keep(x[kept]).mean() >= target_recall:
                lo = q
            else:
                hi = q
        rule.bounds = {n: float(np.quantile(x[kept, j], lo)) for j, n in enumerate(FEATURES)}
    rule.calibration = rule_metrics(rule, x, kept)
    rule.calibration.update(rows=int(len(x)), source=source)
    return rule


def rule_metrics(rule: PreviewRule, x: np.ndarray, kept: np.ndarray) -> dict[str, float]:
    """Recall of the kept candidates and the share of all (and of the rejected) the rule stops."""
    go = rule.keep(x)
    kept = np.asarray(kept, dtype=bool)
    return {"positives": int(kept.sum()),
            "recall": round(float(go[kept].mean()), 4) if kept.any() else None,
            "stop_rate": round(float((~go).mean()), 4) if len(go) else None,
            "stop_rate_rejected": round(float((~go)[~kept].mean()), 4) if (~kept).any() else None}
