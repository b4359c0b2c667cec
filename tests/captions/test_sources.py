"""Caption sources: every kind reads the same captions in the same order, with stable ids."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datagen.captions.sources import CaptionSource, source_id
from datagen.config import CaptionSourceConfig, ConfigError
from datagen.shapes import grammar

CAPTIONS = ["a red car on a street", "A cat\non a sofa", "a lighthouse at dusk", "a bowl of fruit"]


def _texts(cfg, seed=0):
    src = CaptionSource(cfg, seed)
    return [s.caption for s in src.get(0, src.size())]


def test_shipped_captions_are_a_few_hundred_varied_lines():
    src = CaptionSource(CaptionSourceConfig(kind="shipped"), 0)
    captions = [s.caption for s in src.get(0, src.size())]
    assert len(captions) >= 300
    assert len(set(c.lower() for c in captions)) == len(captions)
    assert not any(c.startswith("#") for c in captions)  # comment lines are skipped


def test_txt_jsonl_parquet_and_hf_dir_give_the_same_captions(tmp_path):
    import datasets

    (tmp_path / "c.txt").write_text("\n".join(c.replace("\n", " ") for c in CAPTIONS) + "\n\n")
    with open(tmp_path / "c.jsonl", "w") as f:
        for c in CAPTIONS:
            f.write(json.dumps({"TEXT": c, "url": "x"}) + "\n")
    pq.write_table(pa.table({"TEXT": CAPTIONS, "n": list(range(4))}), tmp_path / "c.parquet")
    datasets.Dataset.from_dict({"TEXT": CAPTIONS}).save_to_disk(str(tmp_path / "hfdir"))
    expected = ["a red car on a street", "A cat on a sofa", "a lighthouse at dusk", "a bowl of fruit"]
    assert _texts(CaptionSourceConfig(kind="file", path=str(tmp_path / "c.txt"))) == expected
    for name in ("c.jsonl", "c.parquet"):
        assert _texts(CaptionSourceConfig(kind="file", path=str(tmp_path / name), column="TEXT")) == expected
    assert _texts(CaptionSourceConfig(kind="hf", path=str(tmp_path / "hfdir"), column="TEXT")) == expected


def test_hf_dataset_from_a_data_dir_goes_through_load_dataset_with_split_and_limit(tmp_path):
    pq.write_table(pa.table({"caption": CAPTIONS}), tmp_path / "train.parquet")
    cfg = CaptionSourceConfig(kind="hf", path=str(tmp_path), split="train", limit=2)
    assert _texts(cfg) == ["a red car on a street", "A cat on a sofa"]


def test_limit_and_ids_are_stable_and_depend_on_position_and_text(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("a\nb b b\nc c c\n")
    src = CaptionSource(CaptionSourceConfig(kind="file", path=str(path), limit=2), 0)
    assert src.size() == 2
    got = src.get(0, 2)
    assert [s.source_id for s in got] == [source_id(0, "a"), source_id(1, "b b b")]
    assert got[0].source_id != source_id(1, "a") and got[0].source_id != source_id(0, "b")


def test_shapes_source_samples_parseable_captions_deterministically_per_seed():
    cfg = CaptionSourceConfig(kind="shapes", min_objects=1, max_objects=2)
    a = CaptionSource(cfg, 7).get(5, 25)
    b = CaptionSource(cfg, 7).get(0, 25)[5:]
    assert a == b  # index i is the same caption whatever range it is read in
    assert [s.caption for s in a] != [s.caption for s in CaptionSource(cfg, 8).get(5, 25)]
    for s in a:
        scene = grammar.parse_caption(s.caption)
        assert 1 <= len(scene.objects) <= 2
    assert CaptionSource(cfg, 7).size() is None


@pytest.mark.parametrize("make, message", [
    (lambda d: CaptionSourceConfig(kind="file", path=str(d / "missing.txt")), "file not found"),
    (lambda d: CaptionSourceConfig(kind="file", path=str(d / "c.csv")), "unsupported file type"),
    (lambda d: CaptionSourceConfig(kind="file", path=str(d / "c.jsonl"), column="caption"), "'caption' missing in"),
    (lambda d: CaptionSourceConfig(kind="file", path=str(d / "c.parquet"), column="caption"), "columns: TEXT"),
    (lambda d: CaptionSourceConfig(kind="file", path=str(d / "bad.jsonl")), "line 2: not valid JSON"),
    (lambda d: CaptionSourceConfig(kind="hf", path=str(d / "nothing-here")), "cannot load Hugging Face dataset"),
])
def test_bad_sources_fail_with_an_error_naming_the_key(tmp_path, make, message):
    (tmp_path / "c.csv").write_text("caption\nx\n")
    (tmp_path / "c.jsonl").write_text(json.dumps({"TEXT": "x"}) + "\n")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"caption": "x"}) + "\n{oops\n")
    pq.write_table(pa.table({"TEXT": ["x"]}), tmp_path / "c.parquet")
    with pytest.raises(ConfigError, match=message) as err:
        CaptionSource(make(tmp_path), 0).size()
    assert str(err.value).startswith("captions.source.")


@pytest.mark.parametrize("name", ["c.txt", "c.jsonl", "c.parquet"])
def test_a_file_source_reads_any_slice_as_the_whole_list_has_it(tmp_path, name):
    # Sources of millions of rows are read a slice per shard: every slice must equal the same
    # part of the whole list (blank lines skipped, parquet across row groups).
    captions = [f"caption number {i}" for i in range(50)]
    path = tmp_path / name
    if name.endswith(".txt"):
        path.write_text("".join(c + ("\n\n" if i % 7 == 0 else "\n") for i, c in enumerate(captions)))
    elif name.endswith(".jsonl"):
        path.write_text("".join(json.dumps({"caption": c}) + "\n" + ("\n" if i % 5 == 0 else "")
                                for i, c in enumerate(captions)))
    else:
        pq.write_table(pa.table({"caption": captions}), path, row_group_size=8)
    src = CaptionSource(CaptionSourceConfig(kind="file", path=str(path), column="caption"), 0)
    assert src.size() == 50
    for start, stop in ((0, 50), (3, 17), (16, 24), (49, 60), (7, 7)):
        assert src.captions(start, stop) == captions[start:min(stop, 50)]


def test_the_run_finds_duplicate_captions_once_and_actors_read_its_flags(tmp_path):
    from datagen.captions import stage
    from datagen.config import load_config
    from datagen.store import RunStore

    path = tmp_path / "c.txt"
    path.write_text("a cat\na dog\nA cat.\na bird\na DOG\n")
    cfg = load_config("shapes", [f"captions.source.path={path}", "captions.source.kind=file",
                                 "captions.num_triples=5", "captions.shard_size=2"])
    store = RunStore(tmp_path / "run")
    assert stage.plan_shards(cfg, store) == [0, 1, 2]
    assert (store.stage_dir("captions") / stage.DUPLICATES_FILE).exists()
    worker = stage.Worker(cfg, str(tmp_path / "run"))
    worker.source.captions = None          # an actor must not read the source to find duplicates
    assert list(worker.duplicates()) == [False, False, True, False, True]


@pytest.mark.parametrize("pipeline,sets,held", [("smoke", ["captions.num_triples=100"], 8), ("paper", [], None)])
def test_a_source_shorter_than_num_triples_fails_at_stage_start_saying_how_to_point_at_a_larger_one(
        tmp_path, api_key, pipeline, sets, held):
    from datagen.captions.stage import plan_shards
    from datagen.config import ConfigError, load_config
    from datagen.store import RunStore

    from .conftest import KEY_ENV

    cfg = load_config(pipeline, [*sets, f"captions.openai.api_key_env={KEY_ENV}"])
    held = held or CaptionSource(cfg.captions.source, 0).size()
    with pytest.raises(ConfigError, match=rf"holds {held} caption.*--set captions\.source\.kind="):
        plan_shards(cfg, RunStore(tmp_path))
    assert not (tmp_path / "captions").exists()    # before any work
