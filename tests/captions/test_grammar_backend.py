"""The offline grammar backend: exact shapes-world triples, reproducible from the run seed."""
from __future__ import annotations

from datagen.captions import stage
from datagen.captions.grammar_backend import GrammarBackend
from datagen.config import load_config
from datagen.records import SourceCaption
from datagen.shapes import grammar
from datagen.store import RunStore


def test_triples_are_grammar_edits_of_the_source_scene():
    backend = GrammarBackend(run_seed=3)
    sources = [SourceCaption(f"s{i}", c) for i, c in enumerate([
        "a small red circle on the left, white background",
        "A large blue square in the middle and a small green triangle on the right, black background.",
    ])]
    for draft in backend.draft(sources):
        before = grammar.parse_caption(draft.input_caption)
        after = grammar.parse_caption(draft.output_caption)
        assert draft.edit_kind in grammar.EDIT_KINDS and before != after and draft.instruction
        assert draft.input_caption == grammar.caption(before)  # canonical form
    assert backend.draft(sources) == GrammarBackend(run_seed=3).draft(sources)
    assert backend.draft(sources) != GrammarBackend(run_seed=4).draft(sources)


def test_captions_outside_the_shapes_world_are_rejected_by_reason():
    [draft] = GrammarBackend(0).draft([SourceCaption("s", "a photo of a dog on a beach")])
    assert draft.rejection == "not_shapes_caption"


def test_shapes_pipeline_shards_hold_unique_reproducible_ids(tmp_path):
    cfg = load_config("shapes", ["captions.num_triples=120", "captions.shard_size=50"])
    for out in ("a", "b"):
        store = RunStore(tmp_path / out)
        worker = stage.Worker(cfg, str(tmp_path / out))
        assert stage.plan_shards(cfg, store) == [0, 1, 2]
        stats = [worker.process_shard(s) for s in (2, 0, 1)]  # any order, any worker
        assert sum(s.count_in for s in stats) == 120
    a, b = RunStore(tmp_path / "a").read_stage("captions"), RunStore(tmp_path / "b").read_stage("captions")
    assert a == b and len({r["triple_id"] for r in a}) == len(a)
    rejected = sum(sum(s.rejections.values()) for s in RunStore(tmp_path / "a").read_stats("captions"))
    assert len(a) + rejected == 120
    assert {r["backend"] for r in a} == {"grammar"} and all(r["edit_kind"] for r in a)
    assert stage.finalize(cfg, RunStore(tmp_path / "a"))["triples"] == len(a)
