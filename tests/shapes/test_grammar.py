import random

import pytest

from datagen.shapes import grammar
from datagen.shapes.world import Scene, ShapeObject


def test_caption_and_parse_are_inverse_on_many_scenes():
    rng = random.Random(0)
    for _ in range(500):
        t = grammar.sample_triple(rng)
        assert grammar.parse_caption(t.input_caption).key() == t.input_scene.key()
        assert grammar.parse_caption(t.output_caption).key() == t.output_scene.key()


def test_caption_reads_like_the_grammar_example():
    scene = Scene("yellow", (ShapeObject("square", "blue", "large", "right"), ShapeObject("circle", "red", "small", "left")))
    assert grammar.caption(scene) == "a small red circle on the left and a large blue square on the right, yellow background"


@pytest.mark.parametrize("kind", grammar.EDIT_KINDS)
def test_every_edit_kind_changes_the_scene_and_has_several_phrasings(kind):
    rng = random.Random(kind)
    instructions = set()
    for _ in range(60):
        t = grammar.sample_triple(rng, kind=kind)
        assert t.edit_kind == kind
        assert t.input_caption != t.output_caption
        instructions.add(t.instruction.split(" ")[0])
    assert len(instructions) >= 2, instructions


def test_add_and_remove_change_the_object_count():
    rng = random.Random(1)
    add = grammar.sample_triple(rng, kind="add")
    assert len(add.output_scene.objects) == len(add.input_scene.objects) + 1
    rem = grammar.sample_triple(rng, kind="remove")
    assert len(rem.output_scene.objects) == len(rem.input_scene.objects) - 1


def test_referring_expression_is_unique_in_its_scene():
    scene = Scene("white", (ShapeObject("circle", "red", "small", "left"), ShapeObject("circle", "blue", "small", "right")))
    refs = grammar.referring_expressions(scene, scene.objects[0])
    assert "the circle" not in refs
    assert "the red circle" in refs and "the circle on the left" in refs


def test_parse_rejects_text_outside_the_grammar():
    with pytest.raises(grammar.CaptionParseError):
        grammar.parse_caption("a photo of a cat on a sofa")
    with pytest.raises(grammar.CaptionParseError):
        grammar.parse_caption("a small red circle on the left and a large blue square on the left, white background")


def _matches_any(text, templates):
    import re

    return any(re.fullmatch(re.sub(r"\\{\w+\\}", ".+", re.escape(t)), text) for t in templates)


@pytest.mark.parametrize("kind", grammar.EDIT_KINDS)
def test_held_out_phrasings_never_appear_in_training_triples(kind):
    keys = ["resize_large", "resize_small"] if kind == "resize" else [kind]
    train_templates = [t for k in keys for t in grammar.templates(k)]
    held_templates = [t for k in keys for t in grammar.templates(k, held_out=True)]
    rng = random.Random(7)
    for _ in range(100):
        train = grammar.sample_triple(rng, kind=kind).instruction
        held = grammar.sample_triple(rng, kind=kind, held_out=True).instruction
        assert _matches_any(train, train_templates) and not _matches_any(train, held_templates)
        assert _matches_any(held, held_templates)


def test_held_out_wordings_use_only_words_that_training_texts_contain():
    vocabulary = grammar.training_vocabulary()
    rng = random.Random(8)
    for _ in range(300):
        t = grammar.sample_triple(rng, held_out=True)
        for text in (t.instruction, t.input_caption, t.output_caption):
            assert set(text.replace(",", " ").split()) <= vocabulary, text
    # and every edit kind has one
    assert all(grammar.templates(k, held_out=True) for k in grammar._TEMPLATES)


def test_unseen_vocabulary_wordings_each_have_a_word_no_training_text_has():
    vocabulary = grammar.training_vocabulary()
    unseen = [t for k in grammar._TEMPLATES for t in grammar.templates(k, "unseen_vocabulary")]
    assert len(unseen) >= 4
    for template in unseen:
        assert grammar._words(template) - vocabulary, template
    scene = Scene("white", (ShapeObject("circle", "red", "small", "left"), ShapeObject("square", "blue", "small", "right")))
    text = grammar.instruction(scene, grammar.Edit("remove", slot="left"), random.Random(0), held_out="unseen_vocabulary")
    assert text.startswith("get rid of the"), text
    with pytest.raises(ValueError, match="no 'unseen_vocabulary' phrasing"):
        grammar.instruction(scene, grammar.Edit("recolour", slot="left", value="green"), random.Random(0),
                            held_out="unseen_vocabulary")
