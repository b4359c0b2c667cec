"""Fixtures of the Stage 1 tests: an API key in a test-only env var, caption files, configs."""
from __future__ import annotations

from pathlib import Path

import pytest

from datagen.config import load_config

KEY_ENV = "EDITSYNTH_TEST_OPENAI_KEY"
SECRET = "sk-test-0123456789-do-not-log"


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    return SECRET


def write_captions(path, captions: list[str]):
    path.write_text("\n".join(captions) + "\n")
    return path


def openai_overrides(base_url: str, caption_file, api: str = "chat", *extra: str) -> list[str]:
    """``--set`` overrides pointing Stage 1 at a caption file (every caption of it: a source shorter
    than num_triples is an error) and a local fake server, fast retries."""
    count = sum(1 for line in Path(caption_file).read_text().splitlines() if line.strip())
    return [
        "captions.backend=openai", "captions.source.kind=file", f"captions.source.path={caption_file}",
        "captions.source.limit=null", f"captions.num_triples={count}", "captions.shard_size=100",
        f"captions.openai.base_url={base_url}", f"captions.openai.api_key_env={KEY_ENV}",
        f"captions.openai.api={api}", "captions.openai.timeout_s=0.5", "captions.openai.backoff_s=0.01",
        "captions.openai.max_retries=3", "captions.openai.few_shot=3", *extra]


def openai_config(base_url: str, caption_file, api: str = "chat", *extra: str, pipeline: str = "smoke"):
    return load_config(pipeline, openai_overrides(base_url, caption_file, api, *extra))
