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


# Training phrasings, one list per key.
_TEMPLATES = {
    "recolour": ["make {ref} {value}", "turn {ref} {value}", "paint {ref} {value}",
                 "change the color of {ref} to {value}"],
    "reshape": ["turn {ref} into a {value}", "make {ref} a {value}", "change {ref} into a {value}"],
    "resize_large": ["make {ref} bigger", "make {ref} larger", "enlarge {ref}"],
    "resize_small": ["make {ref} smaller", "shrink {ref}", "make {ref} small"],
    "background": ["make the background {value}", "change the background to {value}",
                   "use a {value} background"],
    "add": ["add {obj} {where}", "put {obj} {where}", "place {obj} {where}"],
    "remove": ["remove {ref}", "delete {ref}", "take away {ref}"],
    "move": ["move {ref} to the {value}", "move {ref} {where}", "put {ref} {where} instead"],
}
# Phrasings no training triple has, for evaluation: new templates and word orders. Those whose
# words all occur in training texts (captions, referring expressions, training phrasings) are the
# held-out wordings; those with a word no training text has ("get rid of") are reported apart
# (``unseen_vocabulary``): a text encoder trained on these texts alone cannot know such a word.
_HELD_OUT_TEMPLATES = {
    "recolour": ["color {ref} {value}"],
    "reshape": ["replace {ref} with a {colour} {value}", "change {ref} to a {value}"],
    "resize_large": ["make {ref} large", "turn {ref} large"],
    "resize_small": ["make {ref} tiny", "turn {ref} small"],
    "background": ["paint the background {value}", "turn the background {value}"],
    "add": ["draw {obj} {where}", "{where} add {obj}"],
    "remove": ["get rid of {ref}", "take {ref} away"],
    "move": ["shift {ref} to the {value}", "put {ref} to the {value}"],
}
WORDINGS = ("training", "held_out", "unseen_vocabulary")


def _words(text: str) -> set[str]:
    return set(re.sub(r"\{\w+\}", " ", text).replace(",", " ").split())


def training_vocabulary() -> set[str]:
    """Every word a training text can contain: captions, referring expressions, training phrasings."""
    words = set(SIZES) | set(OBJECT_COLOURS) | set(SHAPES) | set(BACKGROUNDS) | {"a", "an", "and", "the", "background"}
    words |= {w for phrase in _SLOT_PHRASE.values() for w in phrase.split()}
    return words | {w for ts in _TEMPLATES.values() for t in ts for w in _words(t)}


def templates(key: str, held_out: bool | str = False) -> list[str]:
    """The phrasings of one wording (WORDINGS) for ``key``; ``held_out=True`` means "held_out".

    "held_out": evaluation-only phrasings built from training words; "unseen_vocabulary": those with
    a word no training text has (possibly none for a key)."""
    wording = "held_out" if held_out is True else "training" if held_out is False else held_out
    if wording == "training":
        return list(_TEMPLATES[key])
    if wording not in WORDINGS:
        raise ValueError(f"unknown wording {wording!r}; known: {WORDINGS}")
    vocabulary = training_vocabulary()
    return [t for t in _HELD_OUT_TEMPLATES[key] if (_words(t) <= vocabulary) == (wording == "held_out")]


def instruction_key(edit: Edit) -> str:
    return f"resize_{edit.value}" if edit.kind == "resize" else edit.kind


def instruction(scene: Scene, edit: Edit, rng: random.Random, held_out: bool | str = False) -> str:
    """Phrase ``edit`` in one wording (``templates``); ``held_out=True`` uses only phrasings that
    training data never contains, built from words it does contain."""
    phrasings = templates(instruction_key(edit), held_out)
    if not phrasings:
        raise ValueError(f"no {held_out!r} phrasing for a {instruction_key(edit)} edit")
    if edit.kind == "background":
        return rng.choice(phrasings).format(value=edit.value)
    if edit.kind == "add":
        obj = edit.new_object
        return rng.choice(phrasings).format(obj=object_phrase(obj, with_slot=False), where=_SLOT_PHRASE[obj.slot])
    target = scene.object_at(edit.slot)
    ref = rng.choice(referring_expressions(scene, target))
    where = _SLOT_PHRASE.get(edit.value or "", "")
    return rng.choice(phrasings).format(ref=ref, value=edit.value, colour=target.colour, where=where)


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
