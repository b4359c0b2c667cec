"""BPE-aware word alignment (pure functions) and the algebra the fast cross path relies on."""
from __future__ import annotations

import pytest
import torch

from datagen.p2p.alignment import align_captions, align_tokens, caption_tokens, split_words


@pytest.fixture(scope="module")
def tok():
    from datagen.shapes.models import build_tokenizer

    return build_tokenizer(32)


def positions(tok, caption):
    return caption_tokens(tok, caption)[0]


def test_words_group_multi_token_bpe_pieces_and_split_punctuation(tok):
    tokens = positions(tok, "a rhombus, turquoise!")
    words = ["".join(tokens[i] for i in w) for w in split_words(tokens)]
    assert words == ["<|startoftext|>", "a</w>", "rhombus</w>", ",</w>", "turquoise</w>", "!</w>", "<|endoftext|>"]
    assert [len(w) for w in split_words(tokens)] == [1, 1, 3, 1, 1, 1, 1]


def test_tokens_without_word_end_markers_are_one_word_each():
    assert split_words(["[CLS]", "ab", "##c", "[SEP]"]) == [[0], [1], [2], [3]]


def test_identical_captions_are_an_identity_swap(tok):
    al = align_captions(tok, "a red circle", "a red circle")
    assert al.kind == "swap"
    assert torch.equal(al.mapper, torch.eye(32))
    assert al.alphas.eq(1).all() and not al.changed.any()


def test_single_token_swap_maps_word_to_word(tok):
    al = align_captions(tok, "a red circle , white background", "a blue circle , white background")
    assert al.kind == "swap"
    assert al.mapper[2, 2] == 1 and al.mapper[2].sum() == 1
    assert al.changed.nonzero().flatten().tolist() == [2]
    assert torch.equal(al.mapper, torch.eye(32))  # same lengths: the swap is positional


def test_swap_into_multi_token_word_spreads_the_map_and_shifts_the_tail(tok):
    # circle (1 token) -> hexagon (hex + agon): target tokens 3, 4 each get half of source token 3.
    al = align_captions(tok, "a red circle on the left", "a red hexagon on the left")
    assert al.kind == "swap"
    assert al.mapper[3, 3] == pytest.approx(0.5) and al.mapper[3, 4] == pytest.approx(0.5)
    assert al.mapper[4, 5] == 1 and al.mapper[6, 7] == 1          # "on", "left" shifted by one
    assert al.mapper[7, 8] == 1                                    # end token
    assert al.mapper[8, 9] == 1 and al.mapper[30, 31] == 1         # padding follows the end token
    assert al.alphas[:31].eq(1).all() and al.alphas[31] == 1
    assert al.changed.nonzero().flatten().tolist() == [3, 4]
    # each source column's attention is passed on whole (the last one falls off the window)
    assert torch.allclose(al.mapper[:31].sum(1), torch.ones(31)) and al.mapper[31].sum() == 0


def test_swap_from_multi_token_word_sums_its_pieces(tok):
    al = align_captions(tok, "a rhombus", "a square")   # r + hom + bus -> square
    assert al.kind == "swap"
    assert al.mapper[2:5, 2].tolist() == [1.0, 1.0, 1.0]
    assert al.mapper[5, 3] == 1                                    # end token


def test_punctuation_is_aligned_as_its_own_word(tok):
    al = align_captions(tok, "a cat, on a mat.", "a dog, on a mat.")
    assert al.kind == "swap"
    tokens = positions(tok, "a dog, on a mat.")
    changed = [tokens[i] for i in al.changed.nonzero().flatten().tolist()]
    assert changed == ["dog</w>"]


def test_inserted_words_refine_and_keep_their_own_maps(tok):
    src, tgt = "a circle on the left", "a big red circle on the left"
    al = align_captions(tok, src, tgt)
    assert al.kind == "refine"
    assert al.alphas[2] == 0 and al.alphas[3] == 0                 # big, red: new
    assert al.index[4] == 2 and al.alphas[4] == 1                  # circle <- circle
    assert al.index[8] == 6                                        # end token <- end token
    assert al.index[9] == 7 and al.alphas[9] == 1                  # padding follows the end token
    assert al.changed.nonzero().flatten().tolist() == [2, 3]
    assert al.mapper[2, 4] == 1 and al.mapper[:, 2].sum() == 0


def test_removed_word_refine_takes_every_kept_word_from_the_source(tok):
    al = align_captions(tok, "a big red circle", "a red circle")
    assert al.kind == "refine"
    assert al.index[:5].tolist() == [0, 1, 3, 4, 5]
    assert al.alphas[:5].eq(1).all() and not al.changed.any()


def test_one_word_replaced_by_two_is_a_refine(tok):
    al = align_captions(tok, "a red circle", "a dark blue circle")
    assert al.kind == "refine"
    assert al.alphas[2:4].tolist() == [0.0, 0.0]
    assert al.index[4] == 3 and al.alphas[4] == 1


def test_words_never_align_on_shared_bpe_pieces(tok):
    # "hexagonal" and "hexagon" share the piece "hex": they are still different words.
    al = align_captions(tok, "a hexagon shape", "a hexagonal shape")
    assert al.kind == "swap"
    tokens = positions(tok, "a hexagonal shape")
    assert all(al.changed[i] for i, t in enumerate(tokens) if t.startswith("hex"))


def test_truncated_captions_are_flagged_and_aligned_within_the_window(tok):
    long = "a red circle " + "and a blue square " * 20
    tokens, truncated = caption_tokens(tok, long)
    assert truncated and len(tokens) == 32 and tokens[-1] == "<|endoftext|>"
    assert not caption_tokens(tok, "a red circle")[1]
    al = align_captions(tok, long, long.replace("red", "green"))
    assert al.kind == "swap" and al.mapper.shape == (32, 32)


def test_sequences_longer_than_the_window_are_refused():
    with pytest.raises(ValueError, match="longer than the window"):
        align_tokens(["a</w>"] * 5, ["a</w>"] * 3, 4)


@pytest.mark.parametrize("target", ["a red hexagon on the left", "a big red circle on the left"])
def test_fused_value_form_equals_edited_maps(tok, target):
    """What attention.py computes (edits moved onto the values) equals P2P's edit of the maps."""
    al = align_captions(tok, "a red circle on the left", target)
    e = al.reweight(2.0)
    torch.manual_seed(0)
    p_src, p_tgt = torch.randn(3, 16, 32).softmax(-1), torch.randn(3, 16, 32).softmax(-1)
    v = torch.randn(3, 32, 8)
    if al.kind == "swap":
        maps = p_src @ al.mapper + p_tgt * (1 - al.alphas)
    else:
        maps = p_src[:, :, al.index] * al.alphas + p_tgt * (1 - al.alphas)
    slow = (maps * e) @ v
    fast = p_src @ ((al.mapper * e[None, :]) @ v) + p_tgt @ (((1 - al.alphas) * e)[:, None] * v)
    assert torch.allclose(slow, fast, atol=1e-5)
