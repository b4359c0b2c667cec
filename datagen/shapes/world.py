"""Scenes of the shapes world and their deterministic renderer.

A scene is a background colour and 1-3 objects, each a shape with a colour and a size, standing
in one of three horizontal slots (left, middle, right) at a jittered height. Captions name the
slot, not the height: the height is a nuisance variable the renderer draws from a seed.
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


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    colour: str
    size: str
    slot: str
    y: int | None = None   # centre height on the 64-px canvas; None = drawn at render time

    def key(self) -> tuple[str, str, str, str]:
        """What a caption says about the object (height excluded)."""
        return (self.slot, self.shape, self.colour, self.size)


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

    def with_heights(self, rng: random.Random) -> "Scene":
        """Fill in missing heights from ``rng``."""
        objs = tuple(o if o.y is not None else replace(o, y=rng.randint(*Y_RANGE)) for o in self.objects)
        return replace(self, objects=objs)


def sample_object(rng: random.Random, slot: str, background: str) -> ShapeObject:
    colour = rng.choice([c for c in OBJECT_COLOURS if c != background])
    return ShapeObject(rng.choice(SHAPES), colour, rng.choice(SIZES), slot, rng.randint(*Y_RANGE))


def sample_scene(rng: random.Random, min_objects: int = 1, max_objects: int = 3) -> Scene:
    background = rng.choice(BACKGROUNDS)
    n = rng.randint(min_objects, max_objects)
    slots = sorted(rng.sample(SLOTS, n), key=SLOTS.index)
    return Scene(background, tuple(sample_object(rng, s, background) for s in slots))


def _polygon(obj: ShapeObject, scale: float) -> tuple[str, list[tuple[float, float]]]:
    cx, cy = SLOT_X[obj.slot] * scale, obj.y * scale
    h = EXTENT[obj.size] * scale / 2
    box = [(cx - h, cy - h), (cx + h - 1, cy + h - 1)]
    if obj.shape == "triangle":
        return "polygon", [(cx - 0.5, cy - h), (cx - h, cy + h - 1), (cx + h - 1, cy + h - 1)]
    return ("ellipse" if obj.shape == "circle" else "rectangle"), box


def render(scene: Scene, size: int = 64, seed: int = 0) -> Image.Image:
    """Draw ``scene`` as an RGB image. Missing heights are drawn from ``seed``."""
    if any(o.y is None for o in scene.objects):
        scene = scene.with_heights(random.Random(seed))
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
