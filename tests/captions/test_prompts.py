"""Seed triples, few-shot prompts in both formats, reply parsing, and the fine-tuning export."""
from __future__ import annotations

import json
import random
from collections import Counter

import pytest

import editsynth_cli
from datagen.captions.prompts import (SeedTriple, chat_messages, chat_response_format, choose_examples,
                                      completion_prompt, load_seed_triples)
from datagen.captions.replies import read_reply
from datagen.captions.validation import normalize
from datagen.config import ConfigError

KINDS = {"style", "object_swap", "weather_season", "material", "lighting", "add", "remove", "colour", "medium"}


def test_shipped_seed_triples_are_many_distinct_and_cover_every_kind_of_edit():
    seeds = load_seed_triples()
    assert len(seeds) >= 150
    counts = Counter(s.kind for s in seeds)
    assert set(counts) == KINDS and min(counts.values()) >= 12
    assert len({normalize(s.input) for s in seeds}) == len(seeds)
    for s in seeds:
        assert normalize(s.output) != normalize(s.input), s
        assert s.edit.strip() and "\n" not in s.input + s.edit + s.output


def test_examples_are_spread_over_kinds_and_reproducible():
    seeds = load_seed_triples()
    a = choose_examples(seeds, 9, random.Random(1))
    assert a == choose_examples(seeds, 9, random.Random(1))
    assert {s.kind for s in a} == KINDS  # 9 examples, 9 kinds: one of each
    assert a != choose_examples(seeds, 9, random.Random(2))
    assert len(choose_examples(seeds[:3], 8, random.Random(0))) == 3
    assert choose_examples(seeds, 0, random.Random(0)) == []


def test_completion_prompt_is_the_original_fine_tuned_format():
    ex = [SeedTriple("a dog", "make it a cat", "a cat", "object_swap")]
    assert completion_prompt("a red car", []) == "a red car\n##\n"
    assert completion_prompt("a red car", ex) == "a dog\n##\nmake it a cat\n%%\na cat\nEND\n\na red car\n##\n"


def test_chat_messages_put_examples_as_turns_and_ask_for_a_json_schema():
    ex = [SeedTriple("a dog", "make it a cat", "a cat", "object_swap")]
    msgs = chat_messages("a red car", ex)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert json.loads(msgs[2]["content"]) == {"edit": "make it a cat", "output": "a cat"}
    assert msgs[-1]["content"] == "a red car"
    fmt = chat_response_format("json_schema")
    assert fmt["json_schema"]["schema"]["required"] == ["edit", "output"]
    assert chat_response_format("none") is None


def test_seed_file_errors_name_the_key_and_line(tmp_path):
    bad = tmp_path / "s.jsonl"
    bad.write_text('{"input": "a", "edit": "b", "output": "c"}\n{"input": "a"}\n')
    with pytest.raises(ConfigError, match=r"captions.seed_triples: .* line 2"):
        load_seed_triples(bad)


@pytest.mark.parametrize("fmt", ["chat", "completion"])
def test_export_finetune_writes_openai_jsonl_of_every_seed(tmp_path, fmt, capsys):
    out = tmp_path / "ft" / "train.jsonl"
    assert editsynth_cli.main(["captions", "export-finetune", "--out", str(out), "--format", fmt]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    seeds = load_seed_triples()
    assert len(rows) == len(seeds)
    if fmt == "chat":
        assert [m["role"] for m in rows[0]["messages"]] == ["system", "user", "assistant"]
        assert rows[0]["messages"][1]["content"] == seeds[0].input
        assert read_reply(rows[0]["messages"][2]["content"]).output == seeds[0].output
    else:
        assert rows[0]["prompt"] == seeds[0].input + "\n##\n"
        assert rows[0]["completion"] == f"{seeds[0].edit}\n%%\n{seeds[0].output}\nEND"
        assert read_reply(rows[0]["completion"]).edit == seeds[0].edit
