"""The statistics of a paired study, as pure functions of per-pair outcomes and scores.

Pairs are matched across arms by key (a triple and a seed): an arm's outcome on one key is
compared with another arm's on the same key, so the seed's own luck cancels. The exact
two-sided sign test looks only at the discordant keys (one arm right, the other wrong); under
"no difference" each discordant key goes either way with probability 1/2.
"""
from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import numpy as np


def rate(flags: Sequence[bool]) -> float | None:
    """Share of True, rounded for a report; None when there is nothing to count."""
    return round(sum(bool(f) for f in flags) / len(flags), 4) if len(flags) else None


def sign_test(a: Mapping[Hashable, bool], b: Mapping[Hashable, bool]) -> dict:
    """Exact two-sided sign test of arm ``a`` against arm ``b`` on their common keys.

    ``a_only``: keys where a succeeds and b fails; ``b_only`` the reverse; ``p_value`` from
    scipy.stats.binomtest(a_only, a_only + b_only, 0.5) (1.0 when no key is discordant).
    """
    from scipy.stats import binomtest

    keys = sorted(set(a) & set(b), key=repr)
    if not keys:
        raise ValueError("the two arms share no pair key: nothing to pair")
    a_only = sum(1 for k in keys if a[k] and not b[k])
    b_only = sum(1 for k in keys if b[k] and not a[k])
    both = sum(1 for k in keys if a[k] and b[k])
    discordant = a_only + b_only
    p_value = binomtest(a_only, discordant, 0.5).pvalue if discordant else 1.0
    return {"pairs": len(keys), "a_only": a_only, "b_only": b_only, "both": both,
            "neither": len(keys) - discordant - both, "difference": round((a_only - b_only) / len(keys), 4),
            "p_value": float(f"{p_value:.4g}")}


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Probability that a positive scores above a negative (ties count half): the ROC AUC.

    None when either class is empty (nothing to separate).
    """
    from scipy.stats import rankdata

    s, y = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    if len(s) != len(y):
        raise ValueError(f"{len(s)} scores but {len(y)} labels")
    pos, neg = int(y.sum()), int((~y).sum())
    if not pos or not neg:
        return None
    ranks = rankdata(s)    # average ranks: ties count half
    return round(float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg)), 4)


def sweep_thresholds(scores: Sequence[float], fixed: Sequence[float] = (), quantiles: int = 10) -> list[float]:
    """The thresholds of a sweep: the ``fixed`` ones (the configured filter's) and the
    1/quantiles ... (quantiles-1)/quantiles quantiles of the scores, rounded, sorted, unique."""
    s = np.asarray(scores, dtype=float)
    qs = np.quantile(s, np.arange(1, quantiles) / quantiles) if len(s) and quantiles > 1 else []
    return sorted({round(float(t), 4) for t in (*fixed, *qs)})


def threshold_sweep(scores: Sequence[float], labels: Sequence[bool], thresholds: Sequence[float]) -> list[dict]:
    """At each threshold t, what a filter keeping ``score >= t`` keeps: how many pairs, the share
    of all, the share of the positives kept (recall) and the positives' rate among the kept
    (precision; None when nothing is kept)."""
    s, y = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    if len(s) != len(y):
        raise ValueError(f"{len(s)} scores but {len(y)} labels")
    out = []
    for t in thresholds:
        kept = s >= t
        n = int(kept.sum())
        out.append({"threshold": t, "kept": n, "kept_share": round(n / len(s), 4) if len(s) else None,
                    "recall": round(float((kept & y).sum() / y.sum()), 4) if y.any() else None,
                    "precision": round(float(y[kept].mean()), 4) if n else None})
    return out
