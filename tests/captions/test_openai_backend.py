"""The openai backend against a scripted OpenAI-compatible server started on 127.0.0.1."""
from __future__ import annotations

import logging

import pytest

from datagen.captions import stage
from datagen.captions.openai_client import BackendError
from datagen.captions.validation import REASONS
from datagen.config import ConfigError
from datagen.store import RunStore

from .conftest import KEY_ENV, SECRET, openai_config, write_captions
from .fake_openai import FakeOpenAI, good_reply

CAPTIONS = [
    "a red car on a street",        # ok
    "a blue boat on a lake",        # 429, 500, then ok: two retries
    "a green tree in a field",      # malformed reply
    "a cat on a sofa",              # output == input
    "a dog on the beach",           # slow (times out), then ok: one retry
    "A red car on a street.",       # duplicate of the first caption: no request
    "x",                            # too short: no request
    "a house with a forbidden sign",  # flagged by moderation
]
SCRIPT = {"a blue boat on a lake": ["429", "500"], "a green tree in a field": ["malformed"],
          "a cat on a sofa": ["same"], "a dog on the beach": ["slow"]}


def _run_shard(cfg, out, shard=0):
    return stage.Worker(cfg, str(out)).process_shard(shard)


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_scripted_replies_give_the_kept_triples_rejections_and_retries(tmp_path, api_key, api):
    caption_file = write_captions(tmp_path / "c.txt", CAPTIONS)
    with FakeOpenAI(SCRIPT, slow_s=1.5) as server:
        cfg = openai_config(server.base_url, caption_file, api, "captions.openai.moderation=true")
        stats = _run_shard(cfg, tmp_path / "run")
        log = list(server.log)
    rows = RunStore(tmp_path / "run").read_table("captions", 0)
    kept = {r["input_caption"]: r for r in rows}
    assert set(kept) == {"a red car on a street", "a blue boat on a lake", "a dog on the beach"}
    for caption, row in kept.items():
        assert (row["instruction"], row["output_caption"]) == good_reply(caption)
        assert (row["backend"], row["model"]) == ("openai", cfg.captions.openai.model)
        assert row["edit_kind"] == "weather_season_time"  # "make it snowy", read from the instruction
        assert row["prompt_version"] == ("chat-json-1" if api == "chat" else "completion-ft-1")
    assert stats.rejections == {"duplicate_caption": 1, "caption_too_short": 1, "malformed_reply": 1,
                                "output_equals_input": 1, "moderation_flagged": 1}
    assert set(stats.rejections) <= set(REASONS)
    assert (stats.count_in, stats.count_out) == (8, 3)
    assert stats.extra["retries"] == 3
    assert stats.extra["retry_reasons"] == {"http_429": 1, "http_500": 1, "timeout": 1}
    assert stats.extra["requests"] == 6 + 3 == len([e for e in log if e[0] != "moderations"])
    assert stats.extra["prompt_tokens"] == 10 * 6  # usage of the 6 answered requests
    assert stats.extra["moderation_requests"] == 1
    # duplicates and too-short captions cost no request
    assert not [e for e in log if e[1] in ("A red car on a street.", "x")]
    assert RunStore(tmp_path / "run").is_done("captions", 0)


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_requests_carry_the_paper_sampling_settings_and_reproducible_prompts(tmp_path, api_key, api):
    caption_file = write_captions(tmp_path / "c.txt", CAPTIONS[:2])
    with FakeOpenAI() as server:
        cfg = openai_config(server.base_url, caption_file, api)
        _run_shard(cfg, tmp_path / "a")
        _run_shard(cfg, tmp_path / "b")
        bodies = list(server.bodies)
    first, again = bodies[:2], bodies[2:]
    key = (lambda b: b["messages"][-1]["content"]) if api == "chat" else (lambda b: b["prompt"])
    assert sorted(first, key=key) == sorted(again, key=key)  # same prompts and seeds on a re-run
    body = first[0]
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["frequency_penalty"]) == (0.7, 1.0, 256, 0.1)
    assert isinstance(body["seed"], int)
    if api == "chat":
        assert len(body["messages"]) == 1 + 2 * 3 + 1  # system, 3 examples, the caption
        assert body["response_format"]["type"] == "json_schema"
    else:
        assert body["stop"] == ["\nEND"]
        assert body["prompt"].count("\nEND\n\n") == 3 and body["prompt"].endswith("\n##\n")
    assert RunStore(tmp_path / "a").read_table("captions", 0) == RunStore(tmp_path / "b").read_table("captions", 0)


def test_exhausted_retries_fail_the_shard_leaving_nothing_then_a_rerun_completes_it(tmp_path, api_key):
    caption_file = write_captions(tmp_path / "c.txt", CAPTIONS[:2])
    with FakeOpenAI({"a blue boat on a lake": ["500"] * 4}) as server:
        cfg = openai_config(server.base_url, caption_file, "chat", "captions.openai.max_retries=2")
        with pytest.raises(BackendError, match=r"gave up after 2 retries \(last: http_500\)"):
            _run_shard(cfg, tmp_path / "run")
        assert server.requests_for("a blue boat on a lake") == ["500"] * 3
        store = RunStore(tmp_path / "run")
        assert not store.is_done("captions", 0) and not store.shard_path("captions", 0, "parquet").exists()
        stats = _run_shard(cfg, tmp_path / "run")  # the 4th request gets a 500, the 5th succeeds
    assert stats.count_out == 2 and stats.extra["retries"] == 1


def test_auth_errors_stop_at_once_and_bad_requests_reject_one_caption(tmp_path, api_key):
    caption_file = write_captions(tmp_path / "c.txt", CAPTIONS[:2])
    with FakeOpenAI({"a red car on a street": ["401"]}) as server:
        cfg = openai_config(server.base_url, caption_file, "chat")
        with pytest.raises(BackendError, match=f"HTTP 401 .* key from \\${KEY_ENV}") as err:
            _run_shard(cfg, tmp_path / "run")
        assert server.requests_for("a red car on a street") == ["401"]  # no retry
        assert SECRET not in str(err.value)
    with FakeOpenAI({"a red car on a street": ["400"], "a blue boat on a lake": ["refuse"]}) as server:
        stats = _run_shard(openai_config(server.base_url, caption_file, "chat"), tmp_path / "run")
    assert stats.rejections == {"request_rejected": 1, "model_refused": 1} and stats.extra["retries"] == 0


def test_concurrency_is_bounded_by_the_config(tmp_path, api_key):
    caption_file = write_captions(tmp_path / "c.txt", [f"a photo of {n} red apples" for n in range(12)])
    with FakeOpenAI(delay_s=0.15) as server:
        cfg = openai_config(server.base_url, caption_file, "chat", "captions.openai.concurrency=3")
        stats = _run_shard(cfg, tmp_path / "run")
        assert server.max_in_flight == 3
    assert stats.count_out == 12


def test_the_api_key_is_sent_but_never_logged_or_stored(tmp_path, api_key, caplog):
    caption_file = write_captions(tmp_path / "c.txt", CAPTIONS)
    caplog.set_level(logging.DEBUG)
    with FakeOpenAI(SCRIPT, slow_s=1.0) as server:
        _run_shard(openai_config(server.base_url, caption_file, "chat"), tmp_path / "run")
        assert server.auth_headers == {f"Bearer {SECRET}"}
    assert caplog.text and SECRET not in caplog.text
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_a_missing_key_fails_at_plan_time_naming_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    cfg = openai_config("http://127.0.0.1:9/v1", write_captions(tmp_path / "c.txt", ["a red car"]))
    with pytest.raises(ConfigError, match=f"environment variable {KEY_ENV} is not set"):
        stage.plan_shards(cfg, RunStore(tmp_path / "run"))
