"""The kind of edit an instruction asks for, by rule: so that audits of LLM runs break down by kind.

The grammar backend knows its kinds exactly (recolour, reshape, ...) and keeps them; an LLM's
triple gets one of EDIT_KINDS from its instruction alone. The rules are tried in order and the
first that matches wins; the order settles the overlaps ("add a blizzard" is weather, "replace
the tower with a giant rocket" is replace, "make it a red apple" is recolour, "make it a Van Gogh
painting" is style). On the shipped human-written seed triples it agrees with their own kinds
where the two lists name the same thing (tests/captions/test_edit_kinds.py).
"""
from __future__ import annotations

import re

EDIT_KINDS = ("add", "remove", "replace", "recolour", "style", "background", "weather_season_time", "move",
              "resize", "other")


def _words(*words: str) -> str:
    return r"\b(?:" + "|".join(words) + r")\b"


_COLOURS = _words(
    "red", "reds", "blue", "green", "yellow", "orange", "purple", "pink", "white", "black", "grey", "gray",
    "brown", "teal", "navy", "emerald", "turquoise", "beige", "violet", "crimson", "scarlet", "magenta", "cyan",
    "lilac", "lavender", "maroon", "blonde", "blond", "ginger", "golden yellow", "sepia", "monochrome",
    "colou?r(?:s|ed|ful)?", "recolou?r", "black and white", "greyscale", "grayscale", "hue", "tint(?:ed)?")

_RULES: tuple[tuple[str, re.Pattern], ...] = tuple((kind, re.compile(pattern)) for kind, pattern in (
    ("remove", r"^(?:remove|delete|erase|eliminate|get rid of|take (?:off|out|away)|clean (?:off|up)|clear (?:away|out)"
               r"|strip (?:off|away))\b|\bremove\b|\bwithout\b|\bno more\b"),
    ("replace", _words("replace", "replaced", "swap", "swapped", "exchange", "substitute", "instead")),
    ("weather_season_time", _words(
        r"snow(?:y|ing|fall)?", r"rain(?:y|ing|fall)?", "fog", "foggy", "mist", "misty", "haze", "hazy", "storm",
        "stormy", "thunderstorm", "lightning storm", "blizzard", "windy", "overcast", "cloudy", "sunny", "drizzle",
        "frost", "frosty", "icy", "autumn", "fall season", "winter", "wintry", "summer", "spring", "springtime",
        "season", "fallen leaves", "night", "nighttime", "night time", "midnight", "daytime", "daylight", "dusk",
        "dawn", "twilight", "sunset", "sunrise", "morning", "evening", "afternoon", "golden hour", "blue hour",
        "moonlit", "moonlight", "starry night", "time of day")),
    ("move", r"^(?:move|shift|slide|reposition|relocate|drag|nudge)\b"
             r"|\bto the (?:left|right|top|bottom|corner|centre|center|middle|side|front|back)\b"),
    ("add", r"^(?:add|put|place|insert|include|give|hang|top (?:it|them|this) with|draw|attach|plant|sprinkle|"
            r"scatter|surround|decorate|fill)\b|\bwith (?:a|an|some) \w+ (?:on|in|next to|beside)\b"),
    ("background", _words("background", "backdrop", "behind (?:it|him|her|them)", "setting", "scenery")),
    ("resize", _words("bigger", "smaller", "larger", "enlarge", "shrink", "resize", "tinier", "taller", "shorter",
                      "wider", "narrower", "thinner", "fatter", "twice as (?:big|large|tall)",
                      "half (?:the|its) size", "scale (?:it )?(?:up|down)",
                      "make (?:it|them) (?:big|small|tiny|huge)")),
    ("style", _words(
        r"paint(?:ing|ed)", "drawing", "drawn", "sketch", "illustration", "illustrated", "style", "styled", "art",
        "artwork", "artistic", r"photo(?:graph)?", "photorealistic", "realistic", r"watercolou?r", "oil", "anime",
        "manga", "cartoon", "comic", "poster", "print", "woodblock", "linocut", "mosaic", "fresco", "statue",
        "sculpture", "bust", "pixel", "pixelated", "3d", "render", "rendered", "low poly", "film", "cinematic",
        "cubist", "cubism", "impressionist", "expressionist", "surreal", "surrealist", "renaissance", "baroque",
        "gothic", "ukiyo-e", "cyberpunk", "steampunk", "noir", "vintage", "retro", "claymation", "embroidery",
        "needlepoint", "tapestry", "stained glass", "graffiti", "mural", "blueprint", "crayon", "charcoal",
        "pencil", "ink", "pastel", "look like", "in the style of", "vaporwave", "minimalist", "abstract",
        "postcard", "playing card", "latte art", "caricature", "engraving", "etching", "origami", "lego")),
    # An object becoming another: "turn the dog into a horse", "make the elephant a giraffe".
    ("replace", r"^(?:turn|change|transform|convert) (?:the|his|her|its|their|this|that|these|those|it) "
                r".*\b(?:into|to) "
                r"|^make (?:the|his|her|its|their|this|that) (?:[\w'-]+ ){1,3}(?:a|an|into) "),
    ("recolour", _COLOURS),
    ("replace", r"^make (?:him|her|them|it) (?:a|an|into) "),   # after recolour: "make it a red apple"
))


def classify_instruction(instruction: str) -> str:
    """One of EDIT_KINDS for an edit instruction ("other" when no rule matches)."""
    text = " ".join(instruction.lower().replace("’", "'").split()).strip(" .!?")
    for kind, pattern in _RULES:
        if pattern.search(text):
            return kind
    return "other"
