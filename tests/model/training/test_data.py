"""Reading edit pairs: our webdataset export and HF datasets, augmentation, splitting, resume."""
from __future__ import annotations

import io
import itertools
import random

import numpy as np
import pytest
import torch
from PIL import Image

from model.training import data as D
from tests.model.train_helpers import shapes_pairs, write_shards


@pytest.fixture(scope="module")
def pairs():
    return shapes_pairs(12, seed=5)


def _keys(source, seed, epoch, reader, readers, buffer=4):
    return [it.key for it in D.reader_items(source, seed, epoch, reader, readers, buffer)]


def test_webdataset_export_samples_decode_with_captions_and_instruction(tmp_path, pairs):
    write_shards(tmp_path, pairs, num_shards=2)
    source = D.open_source(str(tmp_path), "train")
    assert isinstance(source, D.WebdatasetSource) and len(source.units()) == 2
    examples = D.load_examples(str(tmp_path), "train", limit=50)
    assert sorted(ex.key for ex in examples) == sorted(p[0] for p in pairs)
    ex = next(e for e in examples if e.key == pairs[0][0])
    assert ex.instruction == pairs[0][3]["instruction"]
    assert ex.output_caption == pairs[0][3]["output_caption"] and ex.edit_kind == pairs[0][3]["edit_kind"]
    assert ex.input_image.size == (32, 32) and ex.input_image.mode == "RGB"


def test_ranks_split_an_epoch_into_disjoint_parts_that_cover_it(tmp_path, pairs):
    write_shards(tmp_path / "few", pairs, num_shards=1)       # fewer shards than readers: by sample
    write_shards(tmp_path / "many", pairs, num_shards=4)      # enough shards: by shard
    for root in ("few", "many"):
        source = D.open_source(str(tmp_path / root), "train")
        parts = [_keys(source, 0, 0, r, 2) for r in range(2)]
        assert not set(parts[0]) & set(parts[1])
        assert sorted(parts[0] + parts[1]) == sorted(p[0] for p in pairs)
        assert _keys(source, 0, 0, 0, 2) == parts[0]                # deterministic
        assert _keys(source, 0, 1, 0, 1) != _keys(source, 0, 0, 0, 1)  # reshuffled each epoch


def test_one_reader_with_sample_split_sees_the_single_process_order_interleaved(tmp_path, pairs):
    """Rank r takes positions r, r+2, ...: a step of 2 x B/2 covers the same samples as 1 x B."""
    write_shards(tmp_path, pairs, num_shards=1)
    source = D.open_source(str(tmp_path), "train")
    single = _keys(source, 0, 0, 0, 1)
    assert _keys(source, 0, 0, 0, 2) == single[0::2] and _keys(source, 0, 0, 1, 2) == single[1::2]


def test_the_same_crop_and_flip_apply_to_both_images():
    grad = Image.fromarray(
        (torch.arange(48 * 40 * 3).reshape(40, 48, 3) % 251).to(torch.uint8).numpy())
    ex = D.EditExample("k", grad, grad.copy(), "x")
    flips = set()
    for s in range(20):
        a, b, instruction = D.prepare_pair(ex, 32, random.Random(s), random_flip=True)
        assert a.shape == (3, 32, 32) and torch.equal(a, b) and instruction == "x"
        flips.add(torch.equal(a, D.prepare_pair(ex, 32, random.Random(s), random_flip=False)[0]))
    assert flips == {True, False}   # flipped sometimes, not always
    assert a.min() >= -1 and a.max() <= 1


def test_a_flipped_pair_swaps_the_sides_its_instruction_names():
    left_red = np.zeros((32, 32, 3), np.uint8)
    left_red[:, :8, 0] = 255                      # a red band on the left of the input ...
    right_red = left_red.copy()
    right_red[:, -8:, 0] = 255                    # ... and the edit adds one on the right
    ex = D.EditExample("k", Image.fromarray(left_red), Image.fromarray(right_red),
                       "Right: copy the band on the left to the right")
    seen = set()
    for s in range(20):
        a, b, instruction = D.prepare_pair(ex, 32, random.Random(s), random_flip=True,
                                           flip_swap_words=[("left", "right")])
        flipped = bool(a[0, 0, -1] > 0)           # the input's band is now on the right
        seen.add(flipped)
        assert instruction == ("Left: copy the band on the right to the left" if flipped else ex.instruction)
        assert torch.equal(b, torch.maximum(a, a.flip(-1)))   # the edit stays a mirror copy
    assert seen == {True, False}
    # without swap words the words stay, whatever the flip
    assert {D.prepare_pair(ex, 32, random.Random(s), random_flip=True)[2] for s in range(20)} == {ex.instruction}


def test_swap_words_swaps_whole_words_only():
    pairs = [("left", "right")]
    assert D.swap_words("move the LEFT one right, brightly", pairs) == "move the RIGHT one left, brightly"
    assert D.swap_words("leftover rightmost", pairs) == "leftover rightmost"
    assert D.swap_words("Left of it", pairs) == "Right of it"
    assert D.swap_words("left", []) == "left"


def test_resumed_stream_continues_exactly_where_the_batches_stopped(tmp_path, pairs):
    write_shards(tmp_path, pairs, num_shards=3)
    source = D.open_source(str(tmp_path), "train")
    kw = dict(resolution=32, seed=7, shuffle_buffer=4, random_flip=True, batch_size=3)

    def seeds(stream, n):
        loader = torch.utils.data.DataLoader(stream, batch_size=3, collate_fn=D.collate)
        return [b["seeds"] for b in itertools.islice(loader, n)]

    full = seeds(D.EditPairStream(source, **kw), 11)   # crosses two epoch boundaries (12 samples)
    resumed = seeds(D.EditPairStream(source, skip_batches=5, **kw), 6)
    assert resumed == full[5:]
    assert len({s for b in full for s in b}) == 33      # each occurrence has its own draws


def test_resume_skips_per_dataloader_worker(tmp_path, pairs):
    write_shards(tmp_path, pairs, num_shards=4)
    source = D.open_source(str(tmp_path), "train")
    kw = dict(resolution=32, seed=1, shuffle_buffer=2, random_flip=False, batch_size=2)

    def seeds(stream, n):
        loader = torch.utils.data.DataLoader(stream, batch_size=2, collate_fn=D.collate, num_workers=2)
        return [b["seeds"] for b in itertools.islice(loader, n)]

    full = seeds(D.EditPairStream(source, **kw), 9)
    assert seeds(D.EditPairStream(source, skip_batches=3, **kw), 6) == full[3:]


def test_the_stream_mirrors_shapes_pairs_with_their_sides_swapped(tmp_path):
    """A mirrored shapes pair is an exact pair again once its instruction's sides swap."""
    from datagen.shapes import oracle
    from datagen.shapes.data import to_pil

    pairs = [p for p in shapes_pairs(40, seed=3, size=64) if " left" in p[3]["instruction"]][:6]
    write_shards(tmp_path, pairs)
    by_input = {D.to_tensor(Image.open(io.BytesIO(inp)).convert("RGB")).numpy().tobytes(): meta
                for _, inp, _, meta in pairs}
    stream = D.EditPairStream(D.open_source(str(tmp_path), "train"), 64, seed=0, shuffle_buffer=1,
                              random_flip=True, flip_swap_words=[("left", "right")])
    mirrored = 0
    for sample in itertools.islice(iter(stream), 24):
        meta = by_input.get(sample.original.numpy().tobytes())
        if meta is None:              # not the stored input: the mirrored one
            mirrored += 1
            meta = by_input[sample.original.flip(-1).numpy().tobytes()]
            assert sample.instruction == D.swap_words(meta["instruction"], [("left", "right")])
            # the mirrored input and target show the mirrored captions exactly (the oracle's verdict)
            judged = oracle.judge_pair(*to_pil(torch.stack([sample.original, sample.edited])),
                                       *(D.swap_words(meta[k], [("left", "right")])
                                         for k in ("input_caption", "output_caption")))
            assert judged.correct and judged.edit_ok and judged.preserved
        else:
            assert sample.instruction == meta["instruction"]
    assert 0 < mirrored < 24


def test_hugging_face_dataset_with_the_public_columns(tmp_path, pairs):
    import datasets

    rows = {"original_prompt": [], "original_image": [], "edit_prompt": [], "edited_prompt": [], "edited_image": []}
    for key, inp, out, meta in pairs:
        rows["original_prompt"].append(meta["input_caption"])
        rows["original_image"].append({"bytes": inp, "path": None})
        rows["edit_prompt"].append(meta["instruction"])
        rows["edited_prompt"].append(meta["output_caption"])
        rows["edited_image"].append({"bytes": out, "path": None})
    features = datasets.Features({k: datasets.Image() if k.endswith("image") else datasets.Value("string")
                                  for k in rows})
    ds = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": ds, "test": ds.select(range(4))}).save_to_disk(str(tmp_path / "hf"))
    source = D.open_source(str(tmp_path / "hf"), "train")
    assert isinstance(source, D.HFSource) and D.count_pairs(source) == 12
    stream = D.EditPairStream(source, 32, seed=0, random_flip=False, batch_size=4)
    first = next(iter(stream))
    assert first.original.shape == (3, 32, 32) and first.instruction in rows["edit_prompt"]
    test = D.load_examples(str(tmp_path / "hf"), "test", limit=10)
    assert len(test) == 4 and all(ex.input_caption and ex.output_caption for ex in test)

    ds.remove_columns(["edit_prompt"]).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(D.DataError, match="edit_prompt"):
        D.open_source(str(tmp_path / "bad"), "train")


@pytest.mark.parametrize("columns", [
    # the public release's columns, and diffusers' train_instruct_pix2pix.py defaults
    {"input": "original_image", "edited": "edited_image", "instruction": "edit_prompt",
     "input_caption": "original_prompt", "output_caption": "edited_prompt"},
    {"input": "input_image", "edited": "edited_image", "instruction": "edit_prompt"},
])
def test_hugging_face_columns_map_the_input_and_the_target_the_right_way_round(tmp_path, pairs, columns):
    # A swap would train the reverse edit: the input image must be the "before", the target the "after".
    import datasets

    rows = {name: [] for name in columns.values()}
    for key, inp, out, meta in pairs[:4]:
        rows[columns["input"]].append({"bytes": inp, "path": None})
        rows[columns["edited"]].append({"bytes": out, "path": None})
        for field in ("instruction", "input_caption", "output_caption"):
            if field in columns:
                rows[columns[field]].append(meta[field])
    features = datasets.Features({k: datasets.Image() if k.endswith("image") else datasets.Value("string")
                                  for k in rows})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "hf"))
    examples = D.load_examples(str(tmp_path / "hf"), "train", limit=10)
    assert len(examples) == 4
    pixels = lambda data: np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))  # noqa: E731
    by_instruction = {meta["instruction"]: (inp, out, meta) for _, inp, out, meta in pairs[:4]}
    for ex in examples:
        inp, out, meta = by_instruction[ex.instruction]
        assert np.array_equal(np.asarray(ex.input_image), pixels(inp))
        assert np.array_equal(np.asarray(ex.edited_image), pixels(out))
        assert not np.array_equal(pixels(inp), pixels(out))   # the pairs differ, so a swap would show
        captions = ("input_caption", "output_caption")
        assert [getattr(ex, c) for c in captions] == [meta[c] if c in columns else "" for c in captions]


def test_bad_data_paths_and_missing_splits_get_clear_errors(tmp_path, pairs):
    write_shards(tmp_path / "nosplit", pairs, num_shards=1)
    with pytest.raises(D.DataError, match="no 'test' split"):
        D.open_source(str(tmp_path / "nosplit"), "test")
    with pytest.raises(D.DataError, match="no dataset given"):
        D.open_source("", "train")
    with pytest.raises(D.DataError, match="no shards match"):
        D.open_source(str(tmp_path / "none-*.tar"), "train")
    with pytest.raises(D.DataError, match="no shards match"):
        D.open_source(str(tmp_path / "missing.tar"), "train")
    # a brace pattern is expanded first; any of its globs that matches nothing is named
    write_shards(tmp_path / "a", pairs, num_shards=2)
    write_shards(tmp_path / "b", pairs, num_shards=1)
    assert len(D.open_source(str(tmp_path / "{a,b}" / "*.tar"), "train").units()) == 3
    with pytest.raises(D.DataError, match=r"no shards match '.*/c/\*\.tar' \(from"):
        D.open_source(str(tmp_path / "{a,b,c}" / "*.tar"), "train")
    write_shards(tmp_path / "split", pairs, num_shards=1, split="test")
    assert len(D.load_examples(str(tmp_path / "split"), "test", limit=3)) == 3


def test_the_export_folder_layout_is_read_by_split(tmp_path, pairs):
    # export/webdataset/<split>/pairs-NNNNN.tar, as Stage 3 writes it.
    write_shards(tmp_path / "export" / "webdataset", pairs[:8], num_shards=2, split="train")
    write_shards(tmp_path / "export" / "webdataset", pairs[8:], num_shards=1, split="test")
    for root in (tmp_path / "export", tmp_path / "export" / "webdataset"):
        assert len(D.open_source(str(root), "train").units()) == 2
        assert {ex.key for ex in D.load_examples(str(root), "test", 10)} == {p[0] for p in pairs[8:]}
    with pytest.raises(D.DataError, match=r"splits \['test', 'train'\], not 'validation'"):
        D.open_source(str(tmp_path / "export"), "validation")


def test_pairs_are_counted_from_the_tar_headers_and_a_broken_shard_is_named(tmp_path, pairs):
    write_shards(tmp_path / "export" / "webdataset", pairs[:8], num_shards=3, split="train")
    write_shards(tmp_path / "export" / "webdataset", pairs[8:], num_shards=1, split="test")
    train = D.open_source(str(tmp_path / "export"), "train")
    assert D.count_pairs(train) == 8 == len(D.load_examples(str(tmp_path / "export"), "train", limit=50))
    assert D.count_pairs(D.open_source(str(tmp_path / "export"), "test")) == 4
    pattern = str(tmp_path / "export" / "webdataset" / "{train,test}" / "*.tar")
    assert D.count_pairs(D.open_source(pattern, "train")) == 12
    assert D.count_pairs(D.WebdatasetSource(["https://example.org/pairs-00000.tar"])) is None  # not downloaded

    broken = tmp_path / "broken.tar"
    broken.write_bytes((tmp_path / "export" / "webdataset" / "train" / "train-00000.tar").read_bytes()[:700])
    with pytest.raises(D.DataError, match="broken.tar"):
        D.count_pairs(D.WebdatasetSource([str(broken)]))
