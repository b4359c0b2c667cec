"""Export round trips: webdataset shards, the HF parquet dataset, and diffusers' IP2P columns."""
from __future__ import annotations

import argparse
import glob
import io
import json

import numpy as np
import pytest
from PIL import Image

from datagen.filter.export import RELEASE_COLUMNS, export_run, split_of
from datagen.filter.table import read_kept_images, read_scores, read_selection


@pytest.fixture(scope="module")
def exported(scored_run):
    store, cfg = scored_run
    return store, cfg, json.loads((store.root / "export" / "manifest.json").read_text())


def stored_images(store) -> dict[str, dict[str, bytes]]:
    out = {}
    for shard in store.done_shards("filter"):
        out.update(read_kept_images(store, shard))
    return out


def test_split_is_per_triple_deterministic_and_near_the_fractions():
    ids = [f"triple{i}" for i in range(4000)]
    splits = [split_of(t, 0, 0.1, 0.2) for t in ids]
    assert splits == [split_of(t, 0, 0.1, 0.2) for t in ids]
    share = {s: splits.count(s) / len(ids) for s in ("train", "validation", "test")}
    assert abs(share["validation"] - 0.1) < 0.02 and abs(share["test"] - 0.2) < 0.02
    assert splits != [split_of(t, 1, 0.1, 0.2) for t in ids]   # the run seed reshuffles


def test_webdataset_round_trip(exported):
    import webdataset as wds

    store, cfg, manifest = exported
    root = store.root / "export" / "webdataset"
    sizes = json.loads((root / "sizes.json").read_text())
    images, scores = stored_images(store), read_scores(store).set_index("candidate_id")
    selection = read_selection(store).set_index("candidate_id")
    seen = {}
    for split in ("train", "validation", "test"):
        shards = sorted(glob.glob(str(root / split / "pairs-*.tar")))
        per_split = json.loads((root / split / "sizes.json").read_text()) if shards else {}
        for shard in shards:
            samples = list(wds.WebDataset(shard, shardshuffle=False, empty_check=False))
            assert len(samples) == sizes[f"{split}/{shard.rsplit('/', 1)[1]}"] == per_split[shard.rsplit('/', 1)[1]]
            assert len(samples) <= cfg.export.shard_size
            for s in samples:
                key, meta = s["__key__"], json.loads(s["json"])
                seen[key] = meta["split"]
                assert meta["split"] == split and meta["candidate_id"] == key
                assert s["input.png"] == images[key]["input.png"] and s["edited.png"] == images[key]["edited.png"]
                for field in ("input_caption", "instruction", "output_caption", "seed", "p", "cfg_scale", "mode",
                              "steps", "model_id", "edit_kind"):
                    assert meta[field] == scores.loc[key, field]
                assert meta["sim_direction"] == pytest.approx(scores.loc[key, "sim_direction"])
                assert meta["rank"] == selection.loc[key, "rank"]
    assert set(seen) == set(selection.index) and len(seen) == manifest["pairs"]
    triple_split = {}
    for key, split in seen.items():   # never a triple in two splits
        assert triple_split.setdefault(scores.loc[key, "triple_id"], split) == split


def test_hf_parquet_loads_with_datasets_and_holds_the_release_columns(exported, tmp_path):
    import datasets

    store, cfg, manifest = exported
    hf = store.root / "export" / "hf"
    files = {s: sorted(glob.glob(str(hf / "data" / f"{s}-*.parquet"))) for s in ("train", "validation", "test")}
    ds = datasets.load_dataset("parquet", data_files={s: f for s, f in files.items() if f},
                               cache_dir=str(tmp_path / "cache"))
    assert {s: len(d) for s, d in ds.items()} == {s: n for s, n in manifest["splits"].items() if n}
    assert ds["train"].column_names[:5] == list(RELEASE_COLUMNS)
    by_dir = datasets.load_dataset(str(hf), cache_dir=str(tmp_path / "cache2"))   # the dataset card's configs
    assert by_dir["train"].num_rows == ds["train"].num_rows
    images, scores = stored_images(store), read_scores(store).set_index("candidate_id")
    for row in ds["train"]:
        cid = row["candidate_id"]
        assert isinstance(row["original_image"], Image.Image)
        want = np.asarray(Image.open(io.BytesIO(images[cid]["edited.png"])).convert("RGB"))
        assert (np.asarray(row["edited_image"].convert("RGB")) == want).all()
        assert row["original_prompt"] == scores.loc[cid, "input_caption"]
        assert row["edit_prompt"] == scores.loc[cid, "instruction"]
        assert row["edited_prompt"] == scores.loc[cid, "output_caption"]
    triples = {s: set(d["triple_id"]) for s, d in ds.items()}
    assert not (triples.get("train", set()) & (triples.get("validation", set()) | triples.get("test", set())))


# --- diffusers' examples/instruct_pix2pix/train_instruct_pix2pix.py, its column handling --------
# Reproduced minimally (not downloaded): the script's argument defaults, its "6. Get the column
# names for input/target" block, and preprocess_train, which reads the three columns.
def ip2p_parse_args(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset_name", type=str, default=None)
    parser.add_argument("--original_image_column", type=str, default="input_image")
    parser.add_argument("--edited_image_column", type=str, default="edited_image")
    parser.add_argument("--edit_prompt_column", type=str, default="edit_prompt")
    parser.add_argument("--resolution", type=int, default=256)
    return parser.parse_args(argv)


IP2P_DATASET_NAME_MAPPING = {"fusing/instructpix2pix-1000-samples": ("input_image", "edit_prompt", "edited_image")}


def ip2p_columns(args, column_names):
    dataset_columns = IP2P_DATASET_NAME_MAPPING.get(args.dataset_name, None)
    resolved = []
    for arg, position in (("original_image_column", 0), ("edit_prompt_column", 1), ("edited_image_column", 2)):
        value = getattr(args, arg)
        if value is None:
            value = dataset_columns[position] if dataset_columns is not None else column_names[position]
        elif value not in column_names:
            raise ValueError(f"--{arg}' value '{value}' needs to be one of: {', '.join(column_names)}")
        resolved.append(value)
    return resolved


def test_export_feeds_diffusers_instruct_pix2pix_training_columns(exported, tmp_path):
    import datasets
    import torch

    from datagen.shapes.models import build_tokenizer

    store, _, _ = exported
    ds = datasets.load_dataset(str(store.root / "export" / "hf"), cache_dir=str(tmp_path / "cache"))
    column_names = ds["train"].column_names
    with pytest.raises(ValueError, match="needs to be one of"):   # the script's defaults fit the 1000-sample set,
        ip2p_columns(ip2p_parse_args([]), column_names)          # not the public release: map the columns
    args = ip2p_parse_args(["--original_image_column", "original_image", "--edit_prompt_column", "edit_prompt",
                            "--edited_image_column", "edited_image", "--resolution", "32"])
    original_image_column, edit_prompt_column, edited_image_column = ip2p_columns(args, column_names)
    tokenizer = build_tokenizer()

    def convert_to_np(image, resolution):
        return np.array(image.convert("RGB").resize((resolution, resolution))).transpose(2, 0, 1)

    def preprocess_train(examples):
        originals = np.stack([convert_to_np(im, args.resolution) for im in examples[original_image_column]])
        edited = np.stack([convert_to_np(im, args.resolution) for im in examples[edited_image_column]])
        images = 2 * (torch.tensor(np.stack([originals, edited])) / 255) - 1
        examples["original_pixel_values"], examples["edited_pixel_values"] = images[0], images[1]
        examples["input_ids"] = tokenizer(list(examples[edit_prompt_column]), max_length=tokenizer.model_max_length,
                                          padding="max_length", truncation=True, return_tensors="pt").input_ids
        return examples

    def collate_fn(examples):
        return {k: torch.stack([e[k] for e in examples]) for k in ("original_pixel_values", "edited_pixel_values",
                                                                     "input_ids")}

    loader = torch.utils.data.DataLoader(ds["train"].with_transform(preprocess_train), batch_size=2,
                                         collate_fn=collate_fn)
    batch = next(iter(loader))
    assert batch["original_pixel_values"].shape == (2, 3, 32, 32) == batch["edited_pixel_values"].shape
    assert batch["input_ids"].shape == (2, 77)
    assert -1 <= batch["edited_pixel_values"].min() < batch["edited_pixel_values"].max() <= 1


def test_export_to_jpg_reencodes_and_can_write_one_format(run_copy, tmp_path):
    store, cfg = run_copy
    cfg = cfg.model_copy(update={"export": cfg.export.model_copy(update={"image_format": "jpg", "formats": ["webdataset"]})})
    manifest = export_run(cfg, store, out=tmp_path / "out")
    assert not (tmp_path / "out" / "hf").exists() and manifest["pairs"] > 0
    import tarfile

    names = [m.name for t in glob.glob(str(tmp_path / "out" / "webdataset" / "*" / "*.tar"))
             for m in tarfile.open(t).getmembers()]
    assert names and all(n.endswith((".input.jpg", ".edited.jpg", ".json")) for n in names)


def test_export_resumes_per_export_shard_and_redoes_only_what_changed(run_copy, tmp_path):
    import hashlib

    from datagen.filter.export import _unit_names
    from datagen.filter.refilter import refilter

    store, cfg = run_copy

    def files(root):
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
                if p.is_file() and "units" not in p.parts and p.name != "manifest.json"}

    first = export_run(cfg, store, out=tmp_path / "a")
    shards = store.done_shards("filter")
    assert first["export_shards"] == {"total": len(shards), "reused": 0, "written": len(shards)}
    again = export_run(cfg, store, out=tmp_path / "a")          # nothing changed: nothing rewritten
    assert again["export_shards"] == {"total": len(shards), "reused": len(shards), "written": 0}
    before = files(tmp_path / "a")
    _, marker = _unit_names(shards[0])
    (tmp_path / "a" / marker).unlink()                          # as if killed before shard 0 finished
    resumed = export_run(cfg, store, out=tmp_path / "a")
    assert resumed["export_shards"] == {"total": len(shards), "reused": len(shards) - 1, "written": 1}
    assert files(tmp_path / "a") == before                      # the same files, byte for byte
    # a refilter that keeps top-1 instead of top-k changes the pairs of every shard with a multi-pair triple
    info = refilter(store.root, ["filter.max_pairs_per_triple=1"], export=True)
    sel = read_selection(store)
    assert info["export"]["pairs"] == int(sel["images_kept"].sum())
    made = info["export"]["export_shards"]
    assert made["written"] + made["reused"] == made["total"] and made["written"] >= 1
