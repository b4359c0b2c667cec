from datagen.records import ShardStats
from datagen.store import RunStore


def test_shard_is_done_only_after_its_stats_are_written(tmp_path):
    store = RunStore(tmp_path)
    store.write_table("captions", 3, [{"triple_id": "a", "n": 1}])
    assert not store.is_done("captions", 3)
    store.write_stats(ShardStats(stage="captions", shard=3, count_in=1, count_out=1))
    assert store.is_done("captions", 3)
    assert store.done_shards("captions") == [3]
    assert store.read_stage("captions") == [{"triple_id": "a", "n": 1}]


def test_failed_write_leaves_no_partial_file(tmp_path):
    store = RunStore(tmp_path)
    path = store.shard_path("render", 0, "parquet")
    try:
        with store.atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    except RuntimeError:
        pass
    assert not path.exists()
    assert list(path.parent.iterdir()) == []


def test_tar_round_trip_and_dotted_keys_refused(tmp_path):
    store = RunStore(tmp_path)
    store.write_tar("render", 1, [{"__key__": "abc_0001", "input.png": b"x", "json": b"{}"}])
    assert store.read_tar("render", 1) == {"abc_0001": {"input.png": b"x", "json": b"{}"}}
    import pytest

    with pytest.raises(ValueError, match="dot"):
        store.write_tar("render", 2, [{"__key__": "a.b", "json": b"{}"}])
    assert not store.shard_path("render", 2, "tar").exists()


def test_summary_adds_up_shard_stats(tmp_path):
    store = RunStore(tmp_path)
    for shard, rejected in ((0, 2), (1, 3)):
        store.write_stats(ShardStats("captions", shard, count_in=10, count_out=10 - rejected,
                                     rejections={"duplicate": rejected}))
    summary = store.write_summary("captions")
    assert summary["count_out"] == 15 and summary["rejections"] == {"duplicate": 5}
    assert (tmp_path / "captions" / "summary.json").exists()
