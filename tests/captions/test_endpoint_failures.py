"""Stage 1 against endpoints that misbehave the ways real ones do (scripted server on 127.0.0.1):
a refused response format, one 4xx for every request, replies a little off the schema."""
from __future__ import annotations

from pathlib import Path

import pytest

import editsynth_cli
from datagen.captions import stage
from datagen.captions.openai_client import BackendError
from datagen.captions.prompts import load_seed_triples
from datagen.captions.validation import REASONS
from datagen.distribute import StageFailed
from datagen.store import RunStore

from .conftest import openai_config, openai_overrides, write_captions
from .fake_openai import FakeOpenAI, good_reply

PROBE_CAPTION = load_seed_triples()[0].input

# caption -> (what the server answers, what becomes of it)
REPLIES = {
    "a red car on a street": ("prose", "kept"),
    "a blue boat on a lake": ("fenced", "kept"),
    "a green tree in a field": ("synonyms", "kept"),
    "a dog on the beach": ("ok", "kept"),
    "a cat on a sofa": ("sorry", "model_refused"),
    "a horse in a meadow": ("refuse", "model_refused"),
    "a lamp on a desk": ("no_edit", "empty_instruction"),
    "a bridge over a river": ("same", "output_equals_input"),
    "a castle on a hill": ("malformed", "malformed_reply"),
}


def _generate(out: Path, sets: list[str], capsys) -> tuple[int, str]:
    args = ["generate", "--pipeline", "smoke", "--stages", "captions", "--out", str(out)]
    rc = editsynth_cli.main(args + [a for s in sets for a in ("--set", s)])
    return rc, capsys.readouterr().err


def test_replies_off_the_schema_are_kept_and_every_rejection_has_its_own_reason(tmp_path, api_key):
    caption_file = write_captions(tmp_path / "c.txt", list(REPLIES))
    with FakeOpenAI({c: [action] for c, (action, _) in REPLIES.items()}) as server:
        cfg = openai_config(server.base_url, caption_file, "chat", "captions.openai.timeout_s=30")
        stats = stage.Worker(cfg, str(tmp_path / "run")).process_shard(0)
    rows = {r["input_caption"]: r for r in RunStore(tmp_path / "run").read_table("captions", 0)}
    kept = {c for c, (_, fate) in REPLIES.items() if fate == "kept"}
    assert set(rows) == kept
    for caption in kept:
        assert (rows[caption]["instruction"], rows[caption]["output_caption"]) == good_reply(caption)
    assert stats.rejections == {"model_refused": 2, "empty_instruction": 1, "output_equals_input": 1,
                                "malformed_reply": 1}
    assert set(stats.rejections) <= set(REASONS)


def test_a_refusing_endpoint_stops_the_run_before_any_caption_with_its_message_and_a_hint(tmp_path, api_key, capsys):
    caption_file = write_captions(tmp_path / "c.txt", list(REPLIES))
    out = tmp_path / "run"
    with FakeOpenAI(refused_format="json_schema") as server:
        rc, err = _generate(out, openai_overrides(server.base_url, caption_file), capsys)
        asked = [caption for _, caption, _ in server.log]
    assert rc != 0
    assert "response_format of type json_schema is not supported" in err  # the server's own words
    assert "--set captions.openai.response_format=json_object" in err
    assert asked == [PROBE_CAPTION]                    # one probe, no source caption
    assert RunStore(out).done_shards("captions") == []
    with FakeOpenAI(refused_format="json_schema") as server:  # the hint works
        stage.preflight(openai_config(server.base_url, caption_file, "chat",
                                      "captions.openai.response_format=json_object"))
        assert [action for *_, action in server.log] == ["ok"]


def test_a_shard_where_most_requests_get_the_same_4xx_is_not_marked_done(tmp_path, api_key):
    captions = list(REPLIES)[:4]
    caption_file = write_captions(tmp_path / "c.txt", captions)
    out = tmp_path / "run"
    with FakeOpenAI({c: ["400"] for c in captions[:3]}) as server:
        cfg = openai_config(server.base_url, caption_file, "chat", "captions.openai.timeout_s=30")
        with pytest.raises(BackendError, match=r"3 of 4 chat requests .* same answer, HTTP 400: .*scripted 400"):
            stage.Worker(cfg, str(out)).process_shard(0)
        assert not RunStore(out).is_done("captions", 0)
        stats = stage.Worker(cfg, str(out)).process_shard(0)   # the endpoint is fixed: a re-run asks again
    assert stats.count_out == 4 and RunStore(out).is_done("captions", 0)


def test_a_run_that_keeps_no_triples_fails_its_stage(tmp_path, api_key):
    caption_file = write_captions(tmp_path / "c.txt", list(REPLIES)[:3])
    with FakeOpenAI({c: ["malformed"] for c in REPLIES}) as server:
        cfg = openai_config(server.base_url, caption_file, "chat", "captions.openai.timeout_s=30")
        stage.Worker(cfg, str(tmp_path / "run")).process_shard(0)
    with pytest.raises(StageFailed, match=r"0 triples kept from 3 source caption\(s\); rejected: "
                                          r"\{'malformed_reply': 3\}"):
        stage.finalize(cfg, RunStore(tmp_path / "run"))
