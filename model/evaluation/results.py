"""Oracle eval results: their files and keys, several side by side, the guidance an editor should edit at.

``compare_oracle`` pairs the same scenes of several evals and gives the exact sign test of each
difference; ``choose_guidance`` picks the (s_T, s_I) with the most edits made and the rest kept,
on validation scenes only.
"""
from __future__ import annotations

from typing import Sequence

ORACLE_FILE = "oracle_edit.json"
PAIRS_ORACLE_FILE = "oracle_pairs.json"
ORACLE_RATES = ("edit_accuracy", "preservation", "edit_correct")   # edit made, rest kept, both
# The rest kept with what captions leave unsaid (untouched objects' heights, offsets) kept too, and
# the edit made with that: the keys that show what a caption-regenerating baseline loses.
ORACLE_RATES_FULL = ("preservation_full", "edit_correct_full")
# Where each method's rates sit in oracle_edit.json: "sdedit_edit_accuracy", ...
METHOD_PREFIX = {"editor": "", "sdedit": "sdedit_", "identity": "identity_", "seen_phrasing": "seen_phrasing_",
                 "unseen_vocabulary": "unseen_vocabulary_", "dataset": "dataset_"}


class NotAnOracleEval(ValueError):
    """Result ``index`` of a comparison is not the JSON of an oracle eval."""

    def __init__(self, index: int, why: Exception):
        super().__init__(f"result {index + 1} is not an oracle eval ({type(why).__name__}: {why})")
        self.index, self.why = index, why


def _oracle_rows(r: dict) -> tuple[dict, dict, list[float], int]:
    """One oracle eval as (guidance settings, other rows), each {label: ((edit, kept, both) or None,
    per-scene verdicts or None)}, its sweep's "both" and its number of scenes."""
    def row(d: dict, method: str = "editor"):
        keys = [METHOD_PREFIX[method] + k for k in ORACLE_RATES]
        rates = tuple(d[k] for k in keys) if all(k in d for k in keys) else None
        return rates, d.get("by_scene", {}).get(method)   # evals before by_scene: no verdicts

    def setting(d: dict) -> str:
        return f"s_T {d.get('text_guidance_scale', r['text_guidance_scale']):g} / s_I {d['image_guidance_scale']:g}"

    sweep = r.get("image_guidance_sweep", [])
    settings = {setting(r): row(r)}                               # the headline first
    for point in sweep:
        settings.setdefault(setting(point), row(point))
    others = {"worded as in training (headline setting)": row(r, "seen_phrasing"),
              f"SDEdit (strength {r.get('sdedit_strength')})": row(r, "sdedit"),
              "the pairs' own edited images": row(r, "dataset")}   # oracle_pairs.json
    return settings, others, [p["edit_correct"] for p in sweep], r["num_scenes"]


def sign_test(gained: int, lost: int) -> float:
    """Exact two-sided sign test: how likely a split at least this uneven of the scenes that changed
    verdict is, were either editor as likely to win each (McNemar's exact test)."""
    from scipy.stats import binomtest

    return binomtest(gained, gained + lost, 0.5).pvalue if gained + lost else 1.0


def paired_change(first: dict | None, other: dict | None) -> dict | None:
    """Scene by scene from ``first`` to ``other`` (``scene_verdicts`` of the same scenes): for the edit,
    the keeping and both, the scenes gained and lost and the sign test's p; None without verdicts."""
    if not first or not other or len(first["edit"]) != len(other["edit"]):
        return None

    def flags(verdicts: dict) -> dict[str, list[bool]]:
        edit, kept = [c == "1" for c in verdicts["edit"]], [c == "1" for c in verdicts["kept"]]
        return {"edit": edit, "kept": kept, "both": [e and k for e, k in zip(edit, kept)]}

    a, b = flags(first), flags(other)
    change = {}
    for name in ("edit", "kept", "both"):
        gained = sum(y and not x for x, y in zip(a[name], b[name]))
        lost = sum(x and not y for x, y in zip(a[name], b[name]))
        change[name] = {"gained": gained, "lost": lost, "p": sign_test(gained, lost)}
    return change


def _same_scenes(a: dict, b: dict) -> bool:
    """Whether two oracle evals judged the same scenes (held-out ones, or the same dataset's pairs)."""
    return (all(a.get(k) == b.get(k) for k in ("num_scenes", "seed", "data", "split"))
            and a.get("scenes", "test") == b.get("scenes", "test"))   # evals before "scenes": test


def compare_oracle(results: Sequence[dict]) -> dict:
    """Several oracle_edit.json (or oracle_pairs.json) side by side: ``rows`` of (setting, [(edit,
    kept, both) or None per result]) for every guidance setting any of them judged, then the same
    edits worded as in training, SDEdit, the pairs' own images; ``mean_both`` over each one's
    sweep; ``standard_error``, the largest of a rate judged on that many scenes (at 0.5), to read
    the differences against; ``paired``, per row, each later result against the first scene by
    scene (``paired_change``; None where either has no verdicts or the scenes differ), which sees
    through the noise the two share. A result that is no oracle eval raises NotAnOracleEval."""
    parsed = []
    for i, r in enumerate(results):
        try:
            parsed.append(_oracle_rows(r))
        except (KeyError, TypeError, AttributeError) as e:
            raise NotAnOracleEval(i, e) from e
    labels = list(dict.fromkeys(k for settings, *_ in parsed for k in settings))
    labels += dict.fromkeys(k for _, others, *_ in parsed for k in others)
    cells = [{**settings, **others} for settings, others, *_ in parsed]
    table = [(label, [c.get(label, (None, None)) for c in cells]) for label in labels]
    table = [(label, row) for label, row in table if any(rates for rates, _ in row)]
    same = [_same_scenes(results[0], r) for r in results]
    return {
        "rows": [(label, [rates for rates, _ in row]) for label, row in table],
        "mean_both": [sum(sweep) / len(sweep) if sweep else None for *_, sweep, _ in parsed],
        "standard_error": 0.5 / min(n for *_, n in parsed) ** 0.5,
        "paired": [(label, [None] + [paired_change(row[0][1], verdicts) if same[i] else None
                                     for i, (_, verdicts) in enumerate(row[1:], start=1)])
                   for label, row in table],
    }


# What evals must share for their sweeps to be pooled: the same editor judged on the same scenes alike.
POOLED_ALIKE = ("editor", "num_scenes", "seed", "steps", "scheduler")


class NotForChoosing(ValueError):
    """An oracle eval that settings must not be chosen on (test scenes, or no sweep)."""


def choose_guidance(results: Sequence[dict]) -> dict:
    """The (s_T, s_I) of the oracle evals' sweeps that makes the most edits while keeping everything
    else ("both"; ties: more edits, then more kept), and SDEdit's best strength likewise when it was
    swept. Several evals of the same editor and scenes pool their sweeps (a grid widened where its
    best lay on the edge). Only on validation scenes: a setting chosen on the test scenes would
    flatter them."""
    if any(r.get("scenes", "test") != "validation" for r in results):
        raise NotForChoosing("this eval judged the test scenes; choose on the validation scenes "
                             "(`editsynth eval --oracle --set train.eval.oracle_scenes=validation ...`)")
    if any(r.get(k) != results[0].get(k) for r in results for k in POOLED_ALIKE):
        raise NotForChoosing(f"these evals differ in {' or '.join(POOLED_ALIKE)}: their sweeps cannot be pooled")
    points = [p for r in results for p in r.get("image_guidance_sweep") or []]
    if not points:
        raise NotForChoosing("this eval has no guidance sweep to choose from "
                             "(--set train.eval.oracle_image_guidance_sweep=[...])")
    rank = lambda p: tuple(p[k] for k in ("edit_correct", "edit_accuracy", "preservation"))  # noqa: E731
    best = max(points, key=rank)
    chosen = {"text_guidance": best["text_guidance_scale"], "image_guidance": best["image_guidance_scale"],
              "validation": {k: best[k] for k in ORACLE_RATES},
              "judged": {k: results[0].get(k) for k in ("scenes", *POOLED_ALIKE)}}
    sdedit = [p for r in results for p in r.get("sdedit_strength_sweep") or []]
    if sdedit:
        best_sd = max(sdedit, key=rank)
        chosen["sdedit_strength"] = best_sd["sdedit_strength"]
        chosen["sdedit_validation"] = {k: best_sd[k] for k in ORACLE_RATES}
    return chosen
