"""Reading replies as real endpoints write them: JSON in fences or prose, synonym keys, the legacy
``%%`` format, refusals; and the precise reason each unusable reply is counted under."""
from __future__ import annotations

import pytest

from datagen.captions.replies import read_reply
from datagen.captions.validation import REASONS, Validator
from datagen.config import ValidationConfig

KEPT = ("make it blue", "a blue car")


@pytest.mark.parametrize("text", [
    '{"edit": "make it blue", "output": "a blue car"}',
    '```json\n{"edit": "make it blue", "output": "a blue car"}\n```',
    '```\n{"edit": "make it blue", "output": "a blue car"}\n```\nHope this helps!',
    'Sure! Here is the edit: {"edit": "make it blue", "output": "a blue car"}',
    'Sure! Here is the edit:\n\n{\n  "instruction": "make it blue",\n  "output_caption": "a blue car"\n}\n',
    '{"Instruction": " make it blue ", "Edited Caption": "a blue car"}',
    '{"edit-instruction": "make it blue", "new_caption": "a blue car", "input": "a red car"}',
    '{"result": {"edit": "make it blue", "output": "a blue car"}}',
    'The caption {a red car} becomes: {"edit": "make it blue", "output": "a blue car"}',
    "make it blue\n%%\na blue car",
    " make it blue \n%%\n a blue car\nEND\n\na dog\n##\n",      # a server ignoring the stop sequence
])
def test_replies_a_little_off_the_schema_are_kept(text):
    reading = read_reply(text)
    assert (reading.edit, reading.output, reading.rejection) == (*KEPT, "")


@pytest.mark.parametrize("text, reason", [
    ("I'm sorry, but I can't help with that request.", "model_refused"),
    ("I cannot create content that depicts real people.", "model_refused"),
    ("As an AI language model, I do not edit images.", "model_refused"),
    ("this is not json", "malformed_reply"),
    ('{"edit": "make it blue"}', "malformed_reply"),                      # no output caption
    ('{"edit": "make it blue", "output": 3}', "malformed_reply"),
    ('["make it blue", "a blue car"]', "malformed_reply"),
    ('{"edit": "make it blue", "output": "a blue car"', "malformed_reply"),  # cut off by max_tokens
    ("make it blue\n%%\na blue car\n%%\nmore", "malformed_reply"),          # three parts: the original rule
    ("", "malformed_reply"), ("   ", "malformed_reply"), (None, "malformed_reply"),
])
def test_unusable_replies_are_told_apart(text, reason):
    assert read_reply(text).rejection == reason


@pytest.mark.parametrize("text, reason", [
    ('{"edit": " ", "output": "a blue car"}', "empty_instruction"),
    ("\n%%\na blue car", "empty_instruction"),
    ('{"edit": "make it blue", "output": ""}', "empty_output"),
    ('{"instruction": "keep it", "output": "A red car."}', "output_equals_input"),
    ("do nothing\n%%\na red car!", "output_equals_input"),
])
def test_a_reply_that_parses_but_says_nothing_gets_its_own_reason(text, reason):
    reading = read_reply(text)
    assert reading.rejection == ""
    assert Validator(ValidationConfig()).check_reply("a red car", reading.edit, reading.output) == reason
    assert reason in REASONS


def test_a_reply_of_many_braces_is_read_quickly():
    import time

    t0 = time.perf_counter()
    assert read_reply("{" * 20_000 + '{"edit": "e", "output": "o"}').rejection == "malformed_reply"
    assert time.perf_counter() - t0 < 1.0
