"""The offline backend: edits of shapes-world captions drawn from the shapes edit grammar.

Each source caption is parsed into a scene, an edit (recolour, reshape, resize, background,
add, remove, move) is drawn for it with a generator seeded by (run seed, source id), and the
instruction and output caption are written by the grammar: exact, free and reproducible.
"""
from __future__ import annotations

import random

from datagen.records import SourceCaption, seed_from
from datagen.shapes import grammar

from .backends import Draft
from .openai_client import CallCounters


class GrammarBackend:
    name = "grammar"
    model = grammar.GRAMMAR_VERSION
    prompt_version = ""

    def __init__(self, run_seed: int):
        self.run_seed = run_seed
        self.counters = CallCounters()  # stays zero: no requests

    def draft(self, sources: list[SourceCaption]) -> list[Draft]:
        return [self._draft_one(s) for s in sources]

    def _draft_one(self, source: SourceCaption) -> Draft:
        scene = grammar.try_parse_caption(source.caption)
        if scene is None:
            return Draft(source, source.caption, rejection="not_shapes_caption")
        rng = random.Random(seed_from(self.run_seed, source.source_id, "edit"))
        edit = grammar.sample_edit(scene, rng)
        after = grammar.apply_edit(scene, edit)
        return Draft(source, input_caption=grammar.caption(scene),  # canonical form of the caption
                     instruction=grammar.instruction(scene, edit, rng),
                     output_caption=grammar.caption(after), edit_kind=edit.kind)
