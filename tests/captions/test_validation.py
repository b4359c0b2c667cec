"""The original rejections: equality after strip/lower, first-occurrence dedup, length limits."""
from __future__ import annotations

from datagen.captions.validation import Validator, duplicate_flags, normalize
from datagen.config import ValidationConfig


def test_output_equal_to_input_after_strip_and_lowercase_is_rejected():
    v = Validator(ValidationConfig())
    assert normalize(" A red car. ") == normalize("a red  car!?") == "a red car"
    assert v.check_reply("A red car.", "do nothing", "a red car!") == "output_equals_input"
    assert v.check_reply("A red car.", "make it blue", "a blue car") == ""


def test_duplicates_keep_the_first_occurrence_in_source_order():
    flags = [False, False, True, True, False]
    assert list(duplicate_flags([["A cat.", "a dog", "a cat", "A DOG!", "a bird"]])) == flags
    assert list(duplicate_flags([["A cat."], ["a dog", "a cat"], [], ["A DOG!", "a bird"]])) == flags  # any slicing


def test_length_limits_name_the_part_that_broke_them():
    v = Validator(ValidationConfig(min_caption_chars=3, max_caption_chars=20, max_instruction_chars=10))
    assert v.check_caption("ab") == "caption_too_short"
    assert v.check_caption("x" * 21) == "caption_too_long"
    assert v.check_caption("a red car") == ""
    assert v.check_reply("a red car", "make it much much bluer", "a blue car") == "instruction_too_long"
    assert v.check_reply("a red car", "e", "a blue car") == "instruction_too_short"
    assert v.check_reply("a red car", "make it", "a blue car " * 3) == "output_too_long"
