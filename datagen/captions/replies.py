"""Reading what a model means: one reply text -> (instruction, output caption), or why it gives none.

Real endpoints keep to the requested format more or less: a server without JSON mode fences its
JSON or puts it after a sentence ("Sure! Here is the edit: {...}"), a model names the keys its
own way ("instruction", "output_caption"), a completion model fine-tuned on the original format
answers ``edit\\n%%\\noutput``, and an aligned model sometimes refuses in plain words. In order:

1. a JSON object anywhere in the text whose keys name the edit and the output caption (the
   synonyms below, any case, ``-``/space as ``_``), nested at most one level down;
2. the original fine-tuned format: exactly two parts around ``\\n%%\\n``, cut at ``\\nEND``;
3. a refusal sentence -> ``model_refused``;
4. anything else -> ``malformed_reply``.

What the parts say (empty, equal to the input, too long) is the Validator's to judge.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .prompts import EDIT_SEP, END

# The names models give the two parts, seen from chat models asked for {"edit", "output"}.
EDIT_KEYS = ("edit", "instruction", "edit_instruction", "editing_instruction", "edit_prompt", "instruction_text")
OUTPUT_KEYS = ("output", "output_caption", "edited_caption", "new_caption", "caption_after", "after_caption",
               "edited_prompt", "output_prompt", "result_caption", "edited")

# How refusals open, after the chat models' own habits ("I'm sorry, but I can't ...").
_REFUSAL = re.compile(
    r"^\W*(i['’]?m sorry|sorry\b|i apologi[sz]e|i can['’]?t\b|i cannot\b|i can not\b|i am unable|i['’]?m unable"
    r"|i am not able|i['’]?m not able|i won['’]?t\b|i will not\b|as an ai\b|unfortunately,? i)", re.IGNORECASE)
_MAX_OBJECTS = 64   # JSON parse attempts per reply: a reply of nonsense braces costs little


@dataclass(frozen=True)
class Reading:
    """What a reply says: the two parts, or ``rejection`` (model_refused, malformed_reply)."""

    edit: str = ""
    output: str = ""
    rejection: str = ""


def read_reply(text: str | None) -> Reading:
    """The instruction and output caption a reply means (see the module docstring for the order)."""
    if not text or not text.strip():
        return Reading(rejection="malformed_reply")
    for obj in json_objects(text):
        parts = _parts_of(obj)
        if parts is not None:
            return Reading(*parts)
    legacy = _legacy_parts(text)
    if legacy is not None:
        return Reading(*legacy)
    if _REFUSAL.match(text.strip()):
        return Reading(rejection="model_refused")
    return Reading(rejection="malformed_reply")


def json_objects(text: str):
    """Every JSON object in ``text`` that starts at a ``{``, in order (fences and prose skipped)."""
    decoder = json.JSONDecoder()
    start, tries = text.find("{"), 0
    while start != -1 and tries < _MAX_OBJECTS:
        tries += 1
        try:
            obj, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        if isinstance(obj, dict):
            yield obj
        start = text.find("{", end)


def _key(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def _parts_of(obj: dict, depth: int = 0) -> tuple[str, str] | None:
    """(edit, output) of an object naming both parts with strings, else None."""
    keys = {_key(k): v for k, v in obj.items() if isinstance(k, str)}
    edit = next((keys[k] for k in EDIT_KEYS if k in keys), None)
    output = next((keys[k] for k in OUTPUT_KEYS if k in keys), None)
    if isinstance(edit, str) and isinstance(output, str):
        return edit.strip(), output.strip()
    if depth == 0:  # {"result": {"edit": ..., "output": ...}}
        for value in obj.values():
            if isinstance(value, dict) and (parts := _parts_of(value, 1)) is not None:
                return parts
    return None


def _legacy_parts(text: str) -> tuple[str, str] | None:
    """Exactly two parts around ``\\n%%\\n`` (the original rule), cut at ``\\nEND``; else None."""
    parts = text.split(END)[0].split(EDIT_SEP)  # a server that ignores the stop sequence
    if len(parts) != 2:
        return None
    return parts[0].strip(), parts[1].strip()
