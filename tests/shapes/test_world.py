import random

import numpy as np

from datagen.shapes import world


def test_render_is_deterministic_and_heights_come_from_the_seed():
    scene = world.Scene("gray", (world.ShapeObject("triangle", "red", "small", "middle"),))
    a, b = world.render(scene, seed=3), world.render(scene, seed=3)
    assert a.tobytes() == b.tobytes()
    assert any(world.render(scene, seed=s).tobytes() != a.tobytes() for s in range(4, 10))


def test_objects_never_overlap_or_touch_the_border():
    rng = random.Random(0)
    for _ in range(300):
        scene = world.sample_scene(rng, 3, 3)
        masks = []
        for obj in scene.objects:
            img = np.asarray(world.render(world.Scene(scene.background, (obj,))))
            masks.append((img != np.asarray(world.COLOURS[scene.background])).any(-1))
        total = sum(m.astype(int) for m in masks)
        assert total.max() <= 1
        assert not total[0].any() and not total[-1].any() and not total[:, 0].any() and not total[:, -1].any()


def test_object_colour_differs_from_background():
    rng = random.Random(1)
    for _ in range(500):
        scene = world.sample_scene(rng)
        assert all(o.colour != scene.background for o in scene.objects)


def test_training_masks_cover_the_objects_and_their_outlines():
    from datagen.shapes import data

    scene = world.Scene("white", (world.ShapeObject("square", "red", "large", "middle", y=32),))
    mask = data.object_mask([scene], 64)
    rendered = np.asarray(world.render(scene, 64))
    assert mask.shape == (1, 1, 64, 64)
    assert np.array_equal(mask[0, 0].numpy() > 0, (rendered != rendered[0, 0]).any(-1))   # exactly the drawn pixels
    ring = data.boundary_mask(mask)[0, 0].numpy()
    inside = mask[0, 0].numpy()
    # A band one pixel either side of the outline: on the object's border and just outside it,
    # never deep inside or far out.
    assert ring.max() == 1 and 0 < ring.sum() < inside.sum()
    ys, xs = np.nonzero(inside)
    assert ring[ys.min(), xs.min()] == 1 and ring[ys.min() - 1, xs.min()] == 1
    assert ring[(ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2] == 0
    assert ring[0, 0] == 0


def test_thin_mask_marks_the_tips_of_triangles_not_squares():
    from datagen.shapes import data

    def thin(shape, size):
        scene = world.Scene("white", (world.ShapeObject(shape, "red", size, "middle", y=32),))
        mask = data.object_mask([scene], 64)
        return data.thin_mask(mask)[0, 0].numpy(), mask[0, 0].numpy()

    for size in ("small", "large"):
        assert thin("square", size)[0].sum() == 0   # nothing of a square is thinner than 3 px
        tips, inside = thin("triangle", size)
        ys, xs = np.nonzero(inside)
        assert tips[ys.min(), (xs.min() + xs.max()) // 2] == 1   # the apex
        assert tips[ys.max(), xs.min()] == 1 and tips[ys.max(), xs.max()] == 1   # the base corners
        assert tips[(ys.min() + ys.max()) // 2 + 1, (xs.min() + xs.max()) // 2] == 0   # not the body
        assert 0 < tips.sum() < inside.sum()
