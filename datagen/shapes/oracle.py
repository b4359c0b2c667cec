"""The exact oracle of the shapes world: parse an image back into a scene, and judge.

Parsing (noise-tolerant, works on generated images as well as renders):
  nearest-palette colour per pixel -> background = most common colour of the border
  -> connected components of the rest (specks dropped) -> per component: colour by majority,
  size by bounding-box side, shape by the best-overlapping template (circle, square,
  triangle) stretched to its bounding box, slot by centroid.
Judging compares scenes as sets of facts, so a pair can be checked for "the instructed change
happened" and "everything else stayed" separately. What captions never name (each object's
height, offset within its slot, side within its size class: world.UNNAMED_FACTS) is read too,
and "everything else stayed, un-named facts included" (``preserved_full``) holds when each
untouched object's un-named facts moved no more than UNNAMED_TOLERANCE.
"""
from __future__ import annotations

from dataclasses import dataclass

import math

import numpy as np
from PIL import Image
from scipy import ndimage

from .grammar import parse_caption
from .world import COLOURS, EXTENT, REFERENCE_SIZE, SLOT_X, UNNAMED_FACTS, Scene, ShapeObject

_NAMES = list(COLOURS)
_PALETTE = np.array([COLOURS[n] for n in _NAMES], dtype=np.float32)

# Thresholds on the 64-px reference canvas (extent small=12, large=18 px).
MIN_AREA = 20                 # components below this are noise
LARGE_EXTENT = 15
SLOT_BOUNDS = ((SLOT_X["left"] + SLOT_X["middle"]) / 2, (SLOT_X["middle"] + SLOT_X["right"]) / 2)
# How far an un-named fact of an untouched object may move and still count as kept, px on the
# 64-px canvas. Height: 3 px, the probe; the offset and the side are read off the
# bounding box of decoded images, which blur by about a pixel.
UNNAMED_TOLERANCE = {"y": 3, "x_offset": 2, "extent_offset": 1}
assert set(UNNAMED_TOLERANCE) == set(UNNAMED_FACTS)


def _as_array(img) -> np.ndarray:
    if isinstance(img, Image.Image):
        img = img.convert("RGB")
        if img.size != (REFERENCE_SIZE, REFERENCE_SIZE):
            img = img.resize((REFERENCE_SIZE, REFERENCE_SIZE), Image.BILINEAR)
        return np.asarray(img, dtype=np.float32)
    arr = np.asarray(img, dtype=np.float32)
    if arr.max() <= 1.0:
        arr = arr * 255.0
    return arr


def palette_labels(img) -> np.ndarray:
    """Index of the nearest palette colour of every pixel."""
    arr = _as_array(img)
    d = ((arr[:, :, None, :] - _PALETTE[None, None]) ** 2).sum(-1)
    return d.argmin(-1)


def parse_image(img) -> Scene:
    labels = palette_labels(img)
    border = np.concatenate([labels[:2].ravel(), labels[-2:].ravel(), labels[:, :2].ravel(), labels[:, -2:].ravel()])
    bg = int(np.bincount(border, minlength=len(_NAMES)).argmax())
    # A blob of foreground is found first; the object inside it is the blob's dominant colour.
    # Measuring only that colour ignores the halo of in-between colours that blur, JPEG and
    # decoders leave around edges (it would make small objects look large and round).
    blobs, n = ndimage.label(labels != bg)
    objects = []
    for i in range(1, n + 1):
        blob = blobs == i
        if blob.sum() < MIN_AREA:
            continue
        inner = ndimage.binary_erosion(blob)
        colour_idx = int(np.bincount(labels[inner if inner.sum() >= 4 else blob], minlength=len(_NAMES)).argmax())
        core, m = ndimage.label(blob & (labels == colour_idx))
        if m == 0:
            continue
        core = core == (1 + int(np.argmax(ndimage.sum(np.ones_like(core), core, range(1, m + 1)))))
        ys, xs = np.nonzero(core)
        if len(ys) < MIN_AREA // 2:
            continue
        y0, x0 = ys.min(), xs.min()
        h, w = ys.max() - y0 + 1, xs.max() - x0 + 1
        mask = np.zeros((h, w), dtype=bool)
        mask[ys - y0, xs - x0] = True
        shape = classify_shape(ndimage.binary_fill_holes(mask))
        size = "large" if max(h, w) >= LARGE_EXTENT else "small"
        cx = xs.mean()
        slot = "left" if cx < SLOT_BOUNDS[0] else "middle" if cx < SLOT_BOUNDS[1] else "right"
        # Un-named facts off the bounding box, which a triangle's centroid is not centred in. A box of
        # side s from pixel x0 has its centre at x0 + (s - 1) / 2, half a pixel before the drawn
        # centre when s is even: rounding half up reads the drawn centre back exactly.
        objects.append(ShapeObject(shape, _NAMES[colour_idx], size, slot, y=_round(y0 + (h - 1) / 2),
                                   x_offset=_round(x0 + (w - 1) / 2) - SLOT_X[slot],
                                   extent_offset=int(max(h, w)) - EXTENT[size]))
    return Scene(_NAMES[bg], tuple(objects))


def _round(v: float) -> int:
    return math.floor(v + 0.5)


def _templates(h: int, w: int) -> dict[str, np.ndarray]:
    """Masks of each shape drawn into an h x w box the way the renderer draws them."""
    from PIL import ImageDraw

    out = {}
    for shape in ("circle", "square", "triangle"):
        img = Image.new("1", (w, h), 0)
        draw = ImageDraw.Draw(img)
        box = [(0, 0), (w - 1, h - 1)]
        if shape == "circle":
            draw.ellipse(box, fill=1)
        elif shape == "square":
            draw.rectangle(box, fill=1)
        else:
            draw.polygon([((w - 1) / 2, 0), (0, h - 1), (w - 1, h - 1)], fill=1)
        out[shape] = np.asarray(img, dtype=bool)
    return out


def classify_shape(mask: np.ndarray) -> str:
    """The shape whose template, stretched to the component's box, overlaps it best (IoU)."""
    best, best_iou = "square", -1.0
    for shape, tmpl in _templates(*mask.shape).items():
        iou = (mask & tmpl).sum() / max(1, (mask | tmpl).sum())
        if iou > best_iou:
            best, best_iou = shape, iou
    return best


def facts(scene: Scene) -> set[tuple]:
    """A scene as a set of facts: its background, and each slot's object and attributes."""
    out: set[tuple] = {("background", scene.background)}
    for o in scene.objects:
        out |= {("object", o.slot), ("shape", o.slot, o.shape), ("colour", o.slot, o.colour),
                ("size", o.slot, o.size)}
    return out


def scenes_match(parsed: Scene, expected: Scene) -> bool:
    return parsed.key() == expected.key()


def matches_caption(img, caption: str) -> bool:
    return scenes_match(parse_image(img), parse_caption(caption))


def caption_agreement(img, caption: str) -> dict[str, bool]:
    """Per-attribute agreement of an image with its caption (background, colour, shape, count: the model card's columns).

    Object attributes are judged on the objects found in the captioned slots; a missing
    object counts as wrong for every attribute.
    """
    return scene_agreement(parse_image(img), caption)


def scene_agreement(parsed: Scene, caption: str) -> dict[str, bool]:
    """caption_agreement of a scene already parsed from its image."""
    expected = parse_caption(caption)
    agreement = {"background": parsed.background == expected.background,
                 "count": len(parsed.objects) == len(expected.objects)}
    for attr in ("colour", "shape", "size"):
        agreement[attr] = all(
            (got := parsed.object_at(o.slot)) is not None and getattr(got, attr) == getattr(o, attr)
            for o in expected.objects)
    agreement["position"] = sorted(o.slot for o in parsed.objects) == sorted(o.slot for o in expected.objects)
    agreement["all"] = scenes_match(parsed, expected)
    return agreement


@dataclass(frozen=True)
class PairJudgement:
    input_ok: bool        # the before image shows the input caption
    output_ok: bool       # the after image shows the output caption
    edit_ok: bool         # relative to the before image's scene, the instructed change is visible
    preserved: bool       # and every fact the edit should not touch stayed as in the before image
    correct: bool         # input_ok and output_ok: an exactly right training pair
    # preserved, and each untouched object's un-named facts (height, offset, side) kept within
    # UNNAMED_TOLERANCE: what captions leave open stayed as the before image had it
    preserved_full: bool = False
    correct_full: bool = False    # correct and preserved_full


def judge_edit(before: Scene, after: Scene, input_scene: Scene, output_scene: Scene) -> tuple[bool, bool]:
    """(edit_ok, preserved) of an edit from ``before`` to ``after``.

    The instructed change is facts(output) - facts(input) appearing and facts(input) -
    facts(output) disappearing; preservation means all of ``before``'s facts that the
    edit does not concern are still there and nothing unasked-for appeared.
    """
    f_in, f_out = facts(input_scene), facts(output_scene)
    f_before, f_after = facts(before), facts(after)
    added, removed = f_out - f_in, f_in - f_out
    edit_ok = added <= f_after and not (removed & f_after)
    touched_slots = {f[1] for f in added | removed if f[0] != "background"}
    touches_bg = any(f[0] == "background" for f in added | removed)

    def untouched(f: tuple) -> bool:
        return not ((f[0] == "background" and touches_bg) or (f[0] != "background" and f[1] in touched_slots))

    preserved = {f for f in f_before if untouched(f)} == {f for f in f_after if untouched(f)}
    return edit_ok, preserved


def untouched_slots(before: Scene, input_scene: Scene, output_scene: Scene) -> list[str]:
    """The slots of ``before`` whose objects the edit from ``input_scene`` to ``output_scene``
    leaves alone (a background edit touches no object; a move touches both its slots)."""
    f_in, f_out = facts(input_scene), facts(output_scene)
    touched = {f[1] for f in (f_out - f_in) | (f_in - f_out) if f[0] != "background"}
    return [o.slot for o in before.objects if o.slot not in touched]


def unnamed_moves(before: Scene, after: Scene, slots) -> dict[str, dict[str, int | None]]:
    """How far each un-named fact of the objects in ``slots`` moved from ``before`` to ``after``
    (px; None where the object is gone from ``after``)."""
    moves = {}
    for slot in slots:
        a, b = before.object_at(slot), after.object_at(slot)
        moves[slot] = {name: None if b is None or a is None or getattr(a, name) is None or getattr(b, name) is None
                       else abs(getattr(b, name) - getattr(a, name)) for name in UNNAMED_FACTS}
    return moves


def unnamed_kept(before: Scene, after: Scene, slots) -> bool:
    """Whether every un-named fact of the objects in ``slots`` stayed within UNNAMED_TOLERANCE
    (an object that is gone kept nothing)."""
    return all(d is not None and d <= UNNAMED_TOLERANCE[name]
               for fact_moves in unnamed_moves(before, after, slots).values() for name, d in fact_moves.items())


def judge_pair(before_img, after_img, input_caption: str, output_caption: str) -> PairJudgement:
    input_scene, output_scene = parse_caption(input_caption), parse_caption(output_caption)
    before, after = parse_image(before_img), parse_image(after_img)
    input_ok, output_ok = scenes_match(before, input_scene), scenes_match(after, output_scene)
    edit_ok, preserved = judge_edit(before, after, input_scene, output_scene)
    preserved_full = preserved and unnamed_kept(before, after, untouched_slots(before, input_scene, output_scene))
    correct = input_ok and output_ok
    return PairJudgement(input_ok, output_ok, edit_ok, preserved, correct, preserved_full, correct and preserved_full)
