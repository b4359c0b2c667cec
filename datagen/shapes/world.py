"""Scenes of the shapes world and their deterministic renderer.

A scene is a background colour and 1-3 objects, each a shape with a colour and a size, standing
in one of three horizontal slots (left, middle, right). Captions name the slot and the size
class; they never name what a photo would leave unsaid: each object's height, its horizontal
offset within the slot and its exact side within the size class (held at the class's side). Those are un-named facts,
drawn from a seed, that an edit must keep (UNNAMED_FACTS; the oracle judges them).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from PIL import Image, ImageDraw

# Palette: well-separated RGB values so that nearest-colour parsing is exact on renders
# and tolerant to generated images.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 50, 190),
    "orange": (250, 130, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
}
OBJECT_COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
BACKGROUNDS = ("white", "black", "gray", "yellow", "blue", "green")
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
SLOTS = ("left", "middle", "right")

# Geometry on the 64-px reference canvas; other sizes scale it.
REFERENCE_SIZE = 64
SLOT_X = {"left": 11, "middle": 32, "right": 53}
EXTENT = {"small": 12, "large": 18}     # bounding-box side of a shape, px
Y_RANGE = (18, 46)                      # centre heights the renderer draws from
# Version 2 draws each object's offset within its slot (a small object moves up to 3 px either
# way; a large one has 1 px of room); version 1 drew heights alone. Sides within a size class stay
# fixed: the oracle's small/large threshold leaves a generated object 2 px of slack, no more.
WORLD_VERSION = 2
X_OFFSET_RANGE = (-3, 3)                # offset from the slot's centre, px
EXTENT_OFFSET_RANGE = (0, 0)            # side minus its size class's EXTENT, px
# An object stays within SLOT_X +- SLOT_HALF_SPAN: 2 px clear of its neighbours' spans, so that
# objects never touch (the oracle would read two touching objects as one).
SLOT_HALF_SPAN = 9
# What the world draws and captions never name, in the order objects draw them.
UNNAMED_FACTS = ("y", "x_offset", "extent_offset")
_UNNAMED_RANGES = {"y": Y_RANGE, "x_offset": X_OFFSET_RANGE, "extent_offset": EXTENT_OFFSET_RANGE}


def _draw(rng: random.Random, low: int, high: int) -> int:
    # A fact the world holds fixed consumes no randomness: fixing one leaves every scene as it was.
    return rng.randint(low, high) if high > low else low


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    colour: str
    size: str
    slot: str
    y: int | None = None   # centre height on the 64-px canvas; None = drawn at render time
    x_offset: int | None = None        # from the slot's centre, px; None = drawn at render time
    extent_offset: int | None = None   # side minus EXTENT[size], px; None = drawn at render time

    def key(self) -> tuple[str, str, str, str]:
        """What a caption says about the object (un-named facts excluded)."""
        return (self.slot, self.shape, self.colour, self.size)

    def unnamed(self) -> dict[str, int | None]:
        return {name: getattr(self, name) for name in UNNAMED_FACTS}

    def with_unnamed(self, rng: random.Random) -> "ShapeObject":
        """Fill in missing un-named facts from ``rng``."""
        return replace(self, **{name: _draw(rng, *_UNNAMED_RANGES[name])
                                for name, value in self.unnamed().items() if value is None})


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[ShapeObject, ...] = field(default_factory=tuple)

    def __post_init__(self):
        # Objects are kept in slot order, so equal scenes compare equal.
        ordered = tuple(sorted(self.objects, key=lambda o: SLOTS.index(o.slot)))
        object.__setattr__(self, "objects", ordered)

    def key(self) -> tuple:
        return (self.background, tuple(o.key() for o in self.objects))

    def free_slots(self) -> list[str]:
        used = {o.slot for o in self.objects}
        return [s for s in SLOTS if s not in used]

    def object_at(self, slot: str) -> ShapeObject | None:
        return next((o for o in self.objects if o.slot == slot), None)

    def with_unnamed(self, rng: random.Random) -> "Scene":
        """Fill in missing un-named facts (heights, offsets) from ``rng``."""
        return replace(self, objects=tuple(o.with_unnamed(rng) for o in self.objects))

    def is_drawn(self) -> bool:
        """Whether every un-named fact is set (the render no longer depends on a seed)."""
        return all(v is not None for o in self.objects for v in o.unnamed().values())


def sample_object(rng: random.Random, slot: str, background: str) -> ShapeObject:
    colour = rng.choice([c for c in OBJECT_COLOURS if c != background])
    return ShapeObject(rng.choice(SHAPES), colour, rng.choice(SIZES), slot).with_unnamed(rng)


def sample_scene(rng: random.Random, min_objects: int = 1, max_objects: int = 3) -> Scene:
    background = rng.choice(BACKGROUNDS)
    n = rng.randint(min_objects, max_objects)
    slots = sorted(rng.sample(SLOTS, n), key=SLOTS.index)
    return Scene(background, tuple(sample_object(rng, s, background) for s in slots))


def object_box(obj: ShapeObject) -> tuple[int, int, int]:
    """(left, top, side) of the object's bounding box on the 64-px canvas, in whole pixels.

    The offset within the slot is clamped to the slot's span (a large object has little room to
    move): what is drawn, not what was asked, is the fact the oracle reads back.
    """
    side = EXTENT[obj.size] + (obj.extent_offset or 0)
    centre = SLOT_X[obj.slot]
    left = centre + (obj.x_offset or 0) - side // 2
    left = min(max(left, centre - SLOT_HALF_SPAN), centre + SLOT_HALF_SPAN + 1 - side)
    return left, obj.y - side // 2, side


def _polygon(obj: ShapeObject, scale: float) -> tuple[str, list[tuple[float, float]]]:
    left, top, side = object_box(obj)
    x0, y0 = left * scale, top * scale
    x1, y1 = (left + side) * scale - 1, (top + side) * scale - 1
    if obj.shape == "triangle":
        return "polygon", [((x0 + x1) / 2, y0), (x0, y1), (x1, y1)]
    return ("ellipse" if obj.shape == "circle" else "rectangle"), [(x0, y0), (x1, y1)]


def render(scene: Scene, size: int = 64, seed: int = 0) -> Image.Image:
    """Draw ``scene`` as an RGB image. Missing un-named facts are drawn from ``seed``."""
    if not scene.is_drawn():
        scene = scene.with_unnamed(random.Random(seed))
    scale = size / REFERENCE_SIZE
    img = Image.new("RGB", (size, size), COLOURS[scene.background])
    draw = ImageDraw.Draw(img)
    for obj in scene.objects:
        kind, pts = _polygon(obj, scale)
        fill = COLOURS[obj.colour]
        if kind == "ellipse":
            draw.ellipse(pts, fill=fill)
        elif kind == "rectangle":
            draw.rectangle(pts, fill=fill)
        else:
            draw.polygon(pts, fill=fill)
    return img
