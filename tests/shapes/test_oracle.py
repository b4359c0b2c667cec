import io
import random

import numpy as np
from PIL import Image, ImageFilter

from datagen.shapes import grammar, oracle, world


def _perturb(img, seed, blur=0.5, noise=10.0):
    arr = np.asarray(img.filter(ImageFilter.GaussianBlur(blur)), dtype=np.float32)
    arr = arr + np.random.RandomState(seed).normal(0, noise, arr.shape)
    out = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=90)
    return Image.open(buf)


def test_oracle_reads_every_clean_render_exactly():
    rng = random.Random(0)
    for _ in range(300):
        t = grammar.sample_triple(rng)
        scene = t.input_scene.with_heights(rng)
        assert oracle.parse_image(world.render(scene)).key() == scene.key()


def test_oracle_reads_renders_at_other_resolutions():
    rng = random.Random(1)
    for _ in range(50):
        scene = world.sample_scene(rng)
        assert oracle.matches_caption(world.render(scene, size=128), grammar.caption(scene))


def test_oracle_tolerates_blur_noise_and_jpeg():
    rng = random.Random(2)
    ok = 0
    for i in range(200):
        scene = world.sample_scene(rng)
        ok += oracle.matches_caption(_perturb(world.render(scene), i), grammar.caption(scene))
    assert ok / 200 >= 0.95


def test_correct_pair_is_judged_correct_and_reversed_pair_is_not():
    rng = random.Random(3)
    for _ in range(200):
        t = grammar.sample_triple(rng)
        before_scene = t.input_scene.with_heights(rng)
        after_scene = grammar.apply_edit(before_scene, t.edit)
        before, after = world.render(before_scene), world.render(after_scene)
        j = oracle.judge_pair(before, after, t.input_caption, t.output_caption)
        assert j.correct and j.edit_ok and j.preserved, (t, j)
        assert not oracle.judge_pair(after, before, t.input_caption, t.output_caption).edit_ok


def test_unchanged_pair_fails_the_edit_but_preserves():
    rng = random.Random(4)
    t = grammar.sample_triple(rng, kind="recolour")
    img = world.render(t.input_scene, seed=1)
    j = oracle.judge_pair(img, img, t.input_caption, t.output_caption)
    assert j.input_ok and not j.output_ok and not j.edit_ok and j.preserved


def test_collateral_change_breaks_preservation():
    rng = random.Random(5)
    t = grammar.sample_triple(rng, kind="recolour")
    before_scene = t.input_scene.with_heights(rng)
    after_scene = grammar.apply_edit(before_scene, t.edit)
    # Also change the background: the edit is there, but not everything else was kept.
    other_bg = next(b for b in world.BACKGROUNDS
                    if b != after_scene.background and all(o.colour != b for o in after_scene.objects))
    wrong = world.render(world.Scene(other_bg, after_scene.objects))
    j = oracle.judge_pair(world.render(before_scene), wrong, t.input_caption, t.output_caption)
    assert j.edit_ok and not j.preserved


def test_caption_agreement_names_the_wrong_attribute():
    scene = world.Scene("white", (world.ShapeObject("circle", "red", "large", "left", 30),))
    img = world.render(world.Scene("white", (world.ShapeObject("square", "red", "large", "left", 30),)))
    agreement = oracle.caption_agreement(img, grammar.caption(scene))
    assert agreement["colour"] and agreement["size"] and agreement["background"]
    assert not agreement["shape"] and not agreement["all"]
