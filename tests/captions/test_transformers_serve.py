"""Stage 1 against a real OpenAI-compatible server: `transformers serve` on 127.0.0.1 with a tiny
random model built offline. Its replies are nonsense, so every caption goes through the rejection
paths over a real server's protocol, errors and timing; the scripted server (fake_openai.py)
covers the exact replies."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx
import pytest

import editsynth_cli
from datagen.captions import stage
from datagen.captions.validation import REASONS
from datagen.distribute import StageFailed
from datagen.store import RunStore

from . import processes
from .conftest import openai_config, openai_overrides, write_captions
from .tiny_llm import build_tiny_chat_model

TRANSFORMERS_CLI = str(Path(sys.executable).parent / "transformers")
CAPTIONS = ["a red car on a street", "a blue boat on a lake", "a green tree in a field",
            "a cat on a sofa", "a dog on the beach", "a lamp on a desk"]


class TransformersServe:
    def __init__(self, model: Path, url: str):
        self.model, self.url = str(model), url

    def settings(self, *extra: str) -> list[str]:
        """Overrides for this server: short replies, few examples, timeouts for a loaded machine."""
        return [f"captions.openai.model={self.model}", "captions.openai.max_tokens=24", "captions.openai.few_shot=2",
                "captions.openai.timeout_s=60", "captions.openai.concurrency=4", *extra]


@pytest.fixture(scope="module")
def transformers_serve(tmp_path_factory):
    """`transformers serve` pinned to the tiny model, offline, on a free loopback port; stopped by its pid."""
    if not Path(TRANSFORMERS_CLI).exists():
        pytest.fail(f"{TRANSFORMERS_CLI} not found: transformers (a dependency) installs it")
    root = tmp_path_factory.mktemp("transformers-serve")
    model = build_tiny_chat_model(root / "tiny-llm")
    port = processes.free_port()
    log = root / "serve.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = processes.start([TRANSFORMERS_CLI, "serve", str(model), "--host", "127.0.0.1", "--port", str(port),
                            "--device", "cpu", "--dtype", "float32"], log, env=env)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        processes.wait_for(healthy, 120, "transformers serve /health", proc, log)
        yield TransformersServe(model, f"{url}/v1")
    finally:
        processes.stop(proc)


def test_stage_1_end_to_end_against_transformers_serve(tmp_path, api_key, transformers_serve):
    caption_file = write_captions(tmp_path / "c.txt", CAPTIONS)
    cfg = openai_config(transformers_serve.url, caption_file, "chat", "captions.shard_size=3",
                        *transformers_serve.settings())
    store = RunStore(tmp_path / "run")
    stage.preflight(cfg)                        # the probe: the server takes the model and the request
    shards = stage.plan_shards(cfg, store)
    worker = stage.Worker(cfg, str(tmp_path / "run"))
    stats = [worker.process_shard(s) for s in shards]
    with pytest.raises(StageFailed, match=r"0 triples kept from 6 source caption\(s\)"):
        stage.finalize(cfg, store)              # nonsense in, nothing kept: the run must not pass for done
    assert shards == [0, 1] and store.done_shards("captions") == [0, 1]
    rejections = [reason for s in stats for reason, n in s.rejections.items() for _ in range(n)]
    assert len(rejections) == 6 and set(rejections) <= set(REASONS) - {"request_rejected"}
    assert sum(s.extra["requests"] for s in stats) == 6 and sum(s.extra["retries"] for s in stats) == 0
    assert all(s.extra["prompt_tokens"] > 0 and 0 < s.extra["completion_tokens"] <= 3 * 24 for s in stats)


def test_the_completions_api_against_transformers_serve(tmp_path, api_key, transformers_serve):
    caption_file = write_captions(tmp_path / "c.txt", CAPTIONS[:3])
    cfg = openai_config(transformers_serve.url, caption_file, "completions", *transformers_serve.settings())
    stage.preflight(cfg)
    stats = stage.Worker(cfg, str(tmp_path / "run")).process_shard(0)
    assert (stats.count_in, stats.count_out, stats.extra["requests"]) == (3, 0, 3)
    assert sum(stats.rejections.values()) == 3 and "request_rejected" not in stats.rejections


def test_a_model_the_server_does_not_serve_stops_the_cli_at_the_probe(tmp_path, api_key, transformers_serve, capsys):
    caption_file = write_captions(tmp_path / "c.txt", CAPTIONS)
    sets = openai_overrides(transformers_serve.url, caption_file) + transformers_serve.settings(
        "captions.openai.model=gpt-4o-mini")
    out = tmp_path / "run"
    rc = editsynth_cli.main(["generate", "--pipeline", "smoke", "--stages", "captions", "--out", str(out)]
                            + [a for s in sets for a in ("--set", s)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "Server is pinned to" in err and "requested 'gpt-4o-mini'" in err   # the server's own words
    assert "--set captions.openai.model=NAME" in err
    assert RunStore(out).done_shards("captions") == []
