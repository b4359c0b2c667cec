"""Ground-truth labels for shapes-world pairs, and the run's ``report/oracle.json``.

When the triples are shapes-world grammar triples, the exact oracle
(datagen.shapes.oracle.judge_pair) says whether each candidate pair shows its captions and
the instructed change, and (the ``_full`` labels and keys) whether what the captions leave
unsaid (each untouched object's height and offset) stayed as the before image had it. The filter stage judges every scored candidate while its images are
in memory, so the labels cover all candidates (not only those whose images are kept) and
precision/recall of the filter are unbiased.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from datagen.records import Candidate
from datagen.store import RunStore

log = logging.getLogger(__name__)

ORACLE_FILE = "oracle.json"


class ShapesOracle:
    """Judges candidates whose captions parse as shapes-world captions; others get None."""

    def __init__(self):
        from datagen.shapes import grammar, oracle

        self._parse = grammar.try_parse_caption
        self._judge = oracle.judge_pair

    @classmethod
    def create(cls, mode: str) -> "ShapesOracle | None":
        if mode == "off":
            return None
        try:
            return cls()
        except ImportError:  # the shapes world is optional for Stage 3
            return None

    def judge(self, c: Candidate, img_in: Image.Image, img_out: Image.Image) -> dict[str, Any] | None:
        if self._parse(c.input_caption) is None or self._parse(c.output_caption) is None:
            return None
        try:
            j = self._judge(img_in, img_out, c.input_caption, c.output_caption)
        except Exception as e:  # a label is a bonus: never let it cost the candidate its scores
            log.warning("oracle could not judge %s: %s: %s", c.candidate_id, type(e).__name__, e)
            return None
        return {"candidate_id": c.candidate_id, "input_ok": bool(j.input_ok), "output_ok": bool(j.output_ok),
                "edit_ok": bool(j.edit_ok), "preserved": bool(j.preserved), "correct": bool(j.correct),
                "preserved_full": bool(j.preserved_full), "correct_full": bool(j.correct_full)}


def _rate(num: int, den: int) -> float | None:
    return round(num / den, 6) if den else None


LABEL_RATES = ("pairs_correct_rate_all", "pairs_correct_rate_kept", "filter_precision", "filter_recall")


def label_metrics(correct: np.ndarray, selected: np.ndarray) -> dict[str, Any]:
    """Correct-pair rates and the filter's precision/recall for labelled candidates."""
    correct, selected = correct.astype(bool), selected.astype(bool)
    tp = int((correct & selected).sum())
    return {
        "labelled": int(len(correct)),
        "selected": int(selected.sum()),
        "pairs_correct_rate_all": _rate(int(correct.sum()), len(correct)),
        "pairs_correct_rate_kept": _rate(tp, int(selected.sum())),
        "filter_precision": _rate(tp, int(selected.sum())),
        "filter_recall": _rate(tp, int(correct.sum())),
    }


def _metrics(joined: pd.DataFrame) -> dict[str, Any]:
    """label_metrics against ``correct``, and its rates against ``correct_full`` as ``<rate>_full``
    (runs judged before the un-named facts were have no ``correct_full``, so no ``_full`` keys)."""
    out = label_metrics(joined["correct"].to_numpy(), joined["_selected"].to_numpy())
    if "correct_full" in joined:
        full = label_metrics(joined["correct_full"].to_numpy(), joined["_selected"].to_numpy())
        out.update({f"{k}_full": full[k] for k in LABEL_RATES})
    return out


def oracle_summary(scores: pd.DataFrame, oracle: pd.DataFrame, selected: np.ndarray) -> dict[str, Any]:
    """The oracle.json figures: over all judged candidates, the kept ones, and per edit kind.

    ``selected`` is aligned with ``scores``. Candidates that failed before scoring have no
    judgement and are left out (their images never existed).
    """
    joined = scores.assign(_selected=selected).merge(oracle, on="candidate_id", how="inner")
    out = _metrics(joined)
    out["by_edit_kind"] = {kind or "unknown": _metrics(g) for kind, g in joined.groupby("edit_kind", sort=True)}
    for part in ("input_ok", "output_ok", "edit_ok", "preserved", "preserved_full"):
        if part in joined:
            out[f"{part}_rate_all"] = _rate(int(joined[part].sum()), len(joined))
    return out


def write_oracle_json(run: str | Path, values: dict[str, Any]) -> str:
    """Merge ``values`` into ``<run>/report/oracle.json``, keeping keys other tools wrote there
    (p2p_modes, t2i_caption_match_rate, clip_top1, ...); return its location."""
    store = RunStore(run)
    name = f"report/{ORACLE_FILE}"
    current = json.loads(store.read_text(name)) if store.exists(name) else {}
    current.update(values)
    return store.write_json(name, current)
