"""The caption grammar and the edit grammar of the shapes world.

caption(scene) and parse_caption(text) are exact inverses on canonical captions:
  "a small red circle on the left and a large blue square on the right, white background"
An edit (recolour, reshape, resize, background, add, remove, move) turns a scene into another;
its instruction is phrased several ways and names its target by a referring expression that is
unique in the scene ("the circle", "the red circle", "the circle on the left").
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace

from .world import BACKGROUNDS, OBJECT_COLOURS, SHAPES, SIZES, SLOTS, Scene, ShapeObject, sample_object, sample_scene

GRAMMAR_VERSION = "shapes-grammar-1"
EDIT_KINDS = ("recolour", "reshape", "resize", "background", "add", "remove", "move")

_SLOT_PHRASE = {"left": "on the left", "middle": "in the middle", "right": "on the right"}
_PHRASE_SLOT = {v: k for k, v in _SLOT_PHRASE.items()}


# --- captions ---------------------------------------------------------------------------
def object_phrase(obj: ShapeObject, with_slot: bool = True) -> str:
    text = f"a {obj.size} {obj.colour} {obj.shape}"
    return f"{text} {_SLOT_PHRASE[obj.slot]}" if with_slot else text


def caption(scene: Scene) -> str:
    parts = [object_phrase(o) for o in scene.objects]
    objects = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{objects}, {scene.background} background"


_OBJECT_RE = re.compile(
    rf"^an? (?P<size>{'|'.join(SIZES)}) (?P<colour>{'|'.join(OBJECT_COLOURS)}) (?P<shape>{'|'.join(SHAPES)}) "
    rf"(?P<slot>{'|'.join(_PHRASE_SLOT)})$")


class CaptionParseError(ValueError):
    pass


def parse_caption(text: str) -> Scene:
    """The scene a canonical caption describes (heights left unset)."""
    text = text.strip().rstrip(".").lower()
    m = re.match(rf"^(?P<objects>.+), (?P<bg>{'|'.join(BACKGROUNDS)}) background$", text)
    if not m:
        raise CaptionParseError(f"not a shapes-world caption (no background): {text!r}")
    objects = []
    for part in re.split(r", | and ", m["objects"]):
        om = _OBJECT_RE.match(part.strip())
        if not om:
            raise CaptionParseError(f"not a shapes-world object phrase: {part!r} in {text!r}")
        objects.append(ShapeObject(om["shape"], om["colour"], om["size"], _PHRASE_SLOT[om["slot"]]))
    if len({o.slot for o in objects}) != len(objects):
        raise CaptionParseError(f"two objects in one slot: {text!r}")
    return Scene(m["bg"], tuple(objects))


def try_parse_caption(text: str) -> Scene | None:
    try:
        return parse_caption(text)
    except CaptionParseError:
        return None


# --- edits ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Edit:
    kind: str
    slot: str | None = None      # the target object's slot (None for background)
    value: str | None = None     # new colour/shape/size/background/slot
    new_object: ShapeObject | None = None   # for "add"


def apply_edit(scene: Scene, edit: Edit) -> Scene:
    """The scene after ``edit``; every other fact (heights included) is kept."""
    if edit.kind == "background":
        return replace(scene, background=edit.value)
    if edit.kind == "add":
        return replace(scene, objects=scene.objects + (edit.new_object,))
    target = scene.object_at(edit.slot)
    rest = tuple(o for o in scene.objects if o is not target)
    if edit.kind == "remove":
        return replace(scene, objects=rest)
    field_name = {"recolour": "colour", "reshape": "shape", "resize": "size", "move": "slot"}[edit.kind]
    return replace(scene, objects=rest + (replace(target, **{field_name: edit.value}),))


def possible_kinds(scene: Scene) -> list[str]:
    kinds = ["recolour", "reshape", "resize"]
    used_colours = {o.colour for o in scene.objects}
    if any(b not in used_colours and b != scene.background for b in BACKGROUNDS):
        kinds.append("background")
    if scene.free_slots():
        kinds += ["add", "move"]
    if len(scene.objects) >= 2:
        kinds.append("remove")
    return kinds


def sample_edit(scene: Scene, rng: random.Random, kind: str | None = None) -> Edit:
    kind = kind or rng.choice(possible_kinds(scene))
    if kind == "background":
        used = {o.colour for o in scene.objects} | {scene.background}
        return Edit(kind, value=rng.choice([b for b in BACKGROUNDS if b not in used]))
    if kind == "add":
        slot = rng.choice(scene.free_slots())
        return Edit(kind, slot=slot, new_object=sample_object(rng, slot, scene.background))
    target = rng.choice(scene.objects)
    if kind == "recolour":
        value = rng.choice([c for c in OBJECT_COLOURS if c not in (target.colour, scene.background)])
    elif kind == "reshape":
        value = rng.choice([s for s in SHAPES if s != target.shape])
    elif kind == "resize":
        value = "large" if target.size == "small" else "small"
    elif kind == "move":
        value = rng.choice(scene.free_slots())
    elif kind == "remove":
        value = None
    else:
        raise ValueError(f"unknown edit kind {kind!r}; known: {EDIT_KINDS}")
    return Edit(kind, slot=target.slot, value=value)


def referring_expressions(scene: Scene, target: ShapeObject) -> list[str]:
    """Every phrase among a few forms that picks out ``target`` alone in ``scene``."""
    forms = [
        (lambda o: f"the {o.shape}", lambda o: (o.shape,)),
        (lambda o: f"the {o.colour} {o.shape}", lambda o: (o.colour, o.shape)),
        (lambda o: f"the {o.shape} {_SLOT_PHRASE[o.slot]}", lambda o: (o.shape, o.slot)),
        (lambda o: f"the {o.size} {o.colour} {o.shape}", lambda o: (o.size, o.colour, o.shape)),
        (lambda o: f"the {o.colour} {o.shape} {_SLOT_PHRASE[o.slot]}", lambda o: (o.colour, o.shape, o.slot)),
    ]
    found = []
    for phrase, signature in forms:
        if sum(signature(o) == signature(target) for o in scene.objects) == 1:
            found.append(phrase(target))
    return found


_TEMPLATES = {
    "recolour": ["make {ref} {value}", "turn {ref} {value}", "paint {ref} {value}",
                 "change the color of {ref} to {value}", "color {ref} {value}"],
    "reshape": ["turn {ref} into a {value}", "make {ref} a {value}", "change {ref} into a {value}",
                "replace {ref} with a {colour} {value}"],
    "resize_large": ["make {ref} bigger", "make {ref} larger", "enlarge {ref}", "make {ref} large"],
    "resize_small": ["make {ref} smaller", "shrink {ref}", "make {ref} small", "make {ref} tiny"],
    "background": ["make the background {value}", "change the background to {value}",
                   "use a {value} background", "paint the background {value}"],
    "add": ["add {obj} {where}", "put {obj} {where}", "place {obj} {where}", "draw {obj} {where}"],
    "remove": ["remove {ref}", "delete {ref}", "take away {ref}", "get rid of {ref}"],
    "move": ["move {ref} to the {value}", "move {ref} {where}", "put {ref} {where} instead",
             "shift {ref} to the {value}"],
}


def templates(key: str, held_out: bool = False) -> list[str]:
    """Training phrasings, or the one phrasing per kind reserved for evaluation (the last)."""
    return _TEMPLATES[key][-1:] if held_out else _TEMPLATES[key][:-1]


def instruction(scene: Scene, edit: Edit, rng: random.Random, held_out: bool = False) -> str:
    """Phrase ``edit``; ``held_out=True`` uses only phrasings that training data never contains."""
    if edit.kind == "background":
        return rng.choice(templates("background", held_out)).format(value=edit.value)
    if edit.kind == "add":
        obj = edit.new_object
        return rng.choice(templates("add", held_out)).format(obj=object_phrase(obj, with_slot=False),
                                                             where=_SLOT_PHRASE[obj.slot])
    target = scene.object_at(edit.slot)
    ref = rng.choice(referring_expressions(scene, target))
    key = f"resize_{edit.value}" if edit.kind == "resize" else edit.kind
    where = _SLOT_PHRASE.get(edit.value or "", "")
    return rng.choice(templates(key, held_out)).format(ref=ref, value=edit.value, colour=target.colour, where=where)


@dataclass(frozen=True)
class ShapesTriple:
    input_scene: Scene
    output_scene: Scene
    edit: Edit
    edit_kind: str
    input_caption: str
    instruction: str
    output_caption: str


def sample_triple(rng: random.Random, kind: str | None = None, min_objects: int = 1,
                  max_objects: int = 3, held_out: bool = False) -> ShapesTriple:
    """A random scene, a random edit of it, and the (input caption, instruction, output caption).

    ``held_out=True`` phrases the instruction with the evaluation-only phrasings.
    """
    while True:
        scene = sample_scene(rng, min_objects, max_objects)
        if kind is None or kind in possible_kinds(scene):
            break
    edit = sample_edit(scene, rng, kind)
    out = apply_edit(scene, edit)
    return ShapesTriple(scene, out, edit, edit.kind, caption(scene), instruction(scene, edit, rng, held_out),
                        caption(out))
