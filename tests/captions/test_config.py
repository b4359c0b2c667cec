"""Stage 1 settings: wrong values fail at load time naming the key path and the reason."""
from __future__ import annotations

import pytest

from datagen.config import ConfigError, load_config


@pytest.mark.parametrize("override, message", [
    ("captions.num_triples=-1", "captions.num_triples: Input should be greater than or equal to 0"),
    ("captions.shard_size=0", "captions.shard_size: Input should be greater than or equal to 1"),
    ("captions.openai.temperature=3", "captions.openai.temperature: Input should be less than or equal to 2"),
    ("captions.openai.concurrency=0", "captions.openai.concurrency"),
    ("captions.openai.api=edits", "captions.openai.api: Input should be 'chat' or 'completions'"),
    ("captions.backend=gpt", "captions.backend"),
    ("captions.source.kind=file", "captions.source: Value error, path is required when kind is 'file'"),
    ("captions.source.min_objects=3", "min_objects (3) > max_objects"),  # with max_objects=2 below
    ("captions.validation.min_caption_chars=500", "min_caption_chars (500) > max_caption_chars (300)"),
    ("captions.temperature=0.5", "captions.temperature: Extra inputs are not permitted"),
    ("captions.num_triples=many", "captions.num_triples: Input should be a valid integer"),
])
def test_bad_caption_settings_name_the_key(override, message):
    overrides = [override] + (["captions.source.max_objects=2"] if "min_objects" in override else [])
    with pytest.raises(ConfigError) as err:
        load_config("shapes", overrides)
    assert message in str(err.value)


def test_grammar_backend_refuses_the_shipped_photo_captions():
    with pytest.raises(ConfigError, match="set source.kind=shapes"):
        load_config("paper", ["captions.backend=grammar"])


def test_named_pipelines_load_with_their_stage1_settings():
    shapes, paper, smoke = (load_config(n) for n in ("shapes", "paper", "smoke"))
    assert (shapes.captions.backend, shapes.captions.source.kind) == ("grammar", "shapes")
    assert (paper.captions.backend, paper.captions.openai.temperature, paper.captions.openai.max_tokens,
            paper.captions.openai.frequency_penalty) == ("openai", 0.7, 256, 0.1)  # the original generator's GPT-3 sampling settings
    assert smoke.captions.num_triples <= 16
