"""The four metrics and the batched scorer against a direct, one-at-a-time computation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datagen.clip.loading import load_clip
from datagen.clip.metrics import clip_metrics
from datagen.filter.scorer import ClipScorer


@pytest.fixture(scope="module")
def clip(tiny_clip_dir):
    return load_clip(f"local-dir:{tiny_clip_dir}", device="cpu")


@pytest.fixture(scope="module")
def items(shapes_items):
    return shapes_items[0][:12]


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norm) if norm > 1e-8 else 0.0   # unchanged image: no direction, 0 by convention


def _direct(clip, c, img_in, img_out, preprocess: str) -> list[float]:
    """The InstructPix2Pix filter's definitions computed plainly: one image, one caption at a time, numpy cosines."""
    def pixels(img):
        if preprocess == "open_clip":
            return clip.preprocess(img)[None]
        x = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)[None].float() / 255
        x = F.interpolate(x, size=clip.image_size, mode="bicubic", align_corners=False)
        return (x - torch.tensor(clip.mean).view(1, 3, 1, 1)) / torch.tensor(clip.std).view(1, 3, 1, 1)

    with torch.no_grad():
        i0, i1 = (clip.model.encode_image(pixels(im))[0].numpy() for im in (img_in, img_out))
        t0, t1 = (clip.model.encode_text(clip.tokenizer([t]))[0].numpy() for t in (c.input_caption, c.output_caption))
    i0, i1, t0, t1 = (v / np.linalg.norm(v) for v in (i0, i1, t0, t1))
    return [_cos(i0, t0), _cos(i1, t1), _cos(i0, i1), _cos(i1 - i0, t1 - t0)]


@pytest.mark.parametrize("preprocess", ["original", "open_clip"])
def test_scorer_matches_direct_computation_on_tiny_clip(clip, items, preprocess):
    scorer = ClipScorer(clip, batch_size=5, preprocess=preprocess)
    scores = scorer.score([c for c, _, _ in items], [(a, b) for _, a, b in items])
    got = np.array([[s.sim_0, s.sim_1, s.sim_image, s.sim_direction] for s in scores])
    want = np.array([_direct(clip, c, a, b, preprocess) for c, a, b in items])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert [s.candidate_id for s in scores] == [c.candidate_id for c, _, _ in items]
    assert np.ptp(got[:, 3]) > 0.01  # the metric actually varies across candidates


def test_identical_images_give_zero_direction_not_nan():
    f = torch.randn(3, 8)
    t_in, t_out = torch.randn(3, 8), torch.randn(3, 8)
    m = clip_metrics(f, f.clone(), t_in, t_out)
    assert torch.all(m["sim_direction"] == 0)
    np.testing.assert_allclose(m["sim_image"].numpy(), 1.0, atol=1e-6)


def test_metrics_are_scale_invariant_and_check_shapes():
    a, b, c, d = (torch.randn(4, 16) for _ in range(4))
    m1, m2 = clip_metrics(a, b, c, d), clip_metrics(3 * a, 0.5 * b, 7 * c, d)
    for k in m1:
        np.testing.assert_allclose(m1[k].numpy(), m2[k].numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="shapes differ"):
        clip_metrics(a, b[:3], c, d)


def test_text_features_are_encoded_once_per_triple(clip, items):
    scorer = ClipScorer(clip, batch_size=4)
    calls = []
    original = scorer.encode_texts
    scorer.encode_texts = lambda texts: calls.append(list(texts)) or original(texts)
    cands = [c for c, _, _ in items]
    scorer.score(cands, [(a, b) for _, a, b in items])
    encoded = [t for call in calls for t in call]
    assert len(encoded) == 2 * len({c.triple_id for c in cands})   # two captions per triple, once
    scorer.score(cands, [(a, b) for _, a, b in items])
    assert sum(len(c) for c in calls) == len(encoded)                # second pass: all cached


def test_batch_size_does_not_change_scores(clip, items):
    pairs = [(a, b) for _, a, b in items]
    cands = [c for c, _, _ in items]
    one = ClipScorer(clip, batch_size=1).score(cands, pairs)
    many = ClipScorer(clip, batch_size=64).score(cands, pairs)
    np.testing.assert_allclose([s.sim_direction for s in one], [s.sim_direction for s in many], atol=1e-5)


def test_half_precision_path_agrees_with_float32(tiny_clip_dir, clip, items):
    """The GPU path (fp16 weights and inputs) run on CPU: same numbers within half precision."""
    half = load_clip(f"local-dir:{tiny_clip_dir}", device="cpu", precision="fp16")
    assert half.dtype == torch.float16
    pairs, cands = [(a, b) for _, a, b in items], [c for c, _, _ in items]
    ref = ClipScorer(clip, 8).score(cands, pairs)
    got = ClipScorer(half, 8).score(cands, pairs)
    for r, g in zip(ref, got):
        assert abs(r.sim_0 - g.sim_0) < 3e-3 and abs(r.sim_1 - g.sim_1) < 3e-3
        assert abs(r.sim_image - g.sim_image) < 3e-3
        assert abs(r.sim_direction - g.sim_direction) < 0.05   # a difference of near-equal vectors


def test_unchanged_pair_has_exactly_zero_direction_in_any_batch(clip, items):
    """Regression: batched encoding gave an unchanged pair a noise direction (0.29) that could pass."""
    unchanged = [(c, a, b) for c, a, b in items if a.tobytes() == b.tobytes()]
    assert unchanged
    for batch in (1, 3, 64):
        scores = ClipScorer(clip, batch_size=batch).score([c for c, _, _ in items], [(a, b) for _, a, b in items])
        by_id = {s.candidate_id: s for s in scores}
        for c, _, _ in unchanged:
            assert by_id[c.candidate_id].sim_direction == 0.0
            assert by_id[c.candidate_id].sim_image == pytest.approx(1.0, abs=1e-6)


def test_the_sweeps_image_and_direction_similarities_match_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    i_in, i_out, t_in, t_out = (torch.randn(5, 16, generator=g) for _ in range(4))
    u = lambda x: x / x.norm(dim=-1, keepdim=True)  # noqa: E731
    expected_image = torch.stack([torch.dot(u(a), u(b)) for a, b in zip(i_in, i_out)])
    d_img, d_txt = u(i_out) - u(i_in), u(t_out) - u(t_in)
    expected_dir = torch.nn.functional.cosine_similarity(d_img, d_txt, dim=-1)
    m = clip_metrics(i_in, i_out, t_in, t_out)
    torch.testing.assert_close(m["sim_image"], expected_image)
    torch.testing.assert_close(m["sim_direction"], expected_dir)
    # An edit that moves the image exactly along the text direction scores 1.
    same = clip_metrics(u(t_in), u(t_out), t_in, t_out)["sim_direction"]
    torch.testing.assert_close(same, torch.ones(5))
