"""Few-shot prompts from the shipped seed triples, in the two formats the replies come back in.

Two formats:
- chat: a system prompt, few-shot user/assistant turns, a JSON reply ``{"edit", "output"}``
  constrained by a JSON schema;
- completion: the format InstructPix2Pix fine-tuned GPT-3 davinci on,
  ``prompt = input + "\\n##\\n"``, ``completion = edit + "\\n%%\\n" + output + "\\nEND"``,
  stop at ``"\\nEND"``; few-shot examples in the same format serve a base model.
Reading the replies (in either format, or neither) is replies.py's job.
"""
from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from datagen.config import ConfigError

from .sources import DATA_DIR

SEED_TRIPLES = DATA_DIR / "seed_triples.jsonl"
CHAT_PROMPT_VERSION = "chat-json-1"
COMPLETION_PROMPT_VERSION = "completion-ft-1"

PROMPT_SEP = "\n##\n"       # the original fine-tuned format
EDIT_SEP = "\n%%\n"
END = "\nEND"

SYSTEM_PROMPT = (
    "You write training data for an image-editing model. Given the caption of an image, reply "
    "with an instruction that makes one clear visual change to the image (\"edit\") and the "
    "caption of the image after that change (\"output\"). Keep the output caption close to the "
    "input caption: change only what the edit changes. Vary the kind of edit: art style, swapping "
    "an object, weather or season, material, lighting, adding or removing something, colour, "
    "medium. Write the edit as a short imperative sentence. Reply with JSON only: "
    "{\"edit\": \"...\", \"output\": \"...\"}."
)

REPLY_SCHEMA = {
    "type": "object",
    "properties": {"edit": {"type": "string"}, "output": {"type": "string"}},
    "required": ["edit", "output"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class SeedTriple:
    """A human-written example: caption, instruction, edited caption, and its kind of edit."""

    input: str
    edit: str
    output: str
    kind: str = ""


# --- seed triples ---------------------------------------------------------------------------
def load_seed_triples(path: str | Path | None = None) -> list[SeedTriple]:
    """Seed triples from a jsonl file with keys input, edit, output (and optional kind)."""
    path = Path(path) if path else SEED_TRIPLES
    if not path.is_file():
        raise ConfigError(f"captions.seed_triples: file not found: {path}")
    seeds = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            seeds.append(SeedTriple(row["input"], row["edit"], row["output"], row.get("kind", "")))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ConfigError(f"captions.seed_triples: {path} line {n}: expected a JSON object with "
                              f"input, edit, output ({type(e).__name__}: {e})") from None
    if not seeds:
        raise ConfigError(f"captions.seed_triples: {path} holds no triples")
    return seeds


def choose_examples(seeds: list[SeedTriple], k: int, rng: random.Random) -> list[SeedTriple]:
    """``k`` examples spread over the kinds of edit (round robin over shuffled kinds)."""
    by_kind: dict[str, list[SeedTriple]] = defaultdict(list)
    for s in seeds:
        by_kind[s.kind].append(s)
    pools = [rng.sample(group, len(group)) for _, group in sorted(by_kind.items())]
    rng.shuffle(pools)
    chosen: list[SeedTriple] = []
    while len(chosen) < min(k, len(seeds)):
        for pool in pools:
            if pool and len(chosen) < k:
                chosen.append(pool.pop())
    rng.shuffle(chosen)
    return chosen


# --- chat -----------------------------------------------------------------------------------
def chat_reply_text(edit: str, output: str) -> str:
    return json.dumps({"edit": edit, "output": output}, ensure_ascii=False)


def chat_messages(caption: str, examples: list[SeedTriple]) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    for ex in examples:
        messages.append({"role": "user", "content": ex.input})
        messages.append({"role": "assistant", "content": chat_reply_text(ex.edit, ex.output)})
    messages.append({"role": "user", "content": caption})
    return messages


def chat_response_format(kind: str) -> dict | None:
    if kind == "json_schema":
        return {"type": "json_schema",
                "json_schema": {"name": "edit_triple", "strict": True, "schema": REPLY_SCHEMA}}
    if kind == "json_object":
        return {"type": "json_object"}
    return None


# --- completion (the original fine-tuned format) --------------------------------------------
def completion_text(edit: str, output: str) -> str:
    return f"{edit}{EDIT_SEP}{output}{END}"


def completion_prompt(caption: str, examples: list[SeedTriple]) -> str:
    shots = "".join(f"{ex.input}{PROMPT_SEP}{completion_text(ex.edit, ex.output)}\n\n" for ex in examples)
    return f"{shots}{caption}{PROMPT_SEP}"


# --- fine-tuning export ---------------------------------------------------------------------
def finetune_row(seed: SeedTriple, fmt: str) -> dict:
    """One line of OpenAI fine-tuning JSONL: chat messages, or legacy prompt/completion."""
    if fmt == "chat":
        return {"messages": [{"role": "system", "content": SYSTEM_PROMPT},
                             {"role": "user", "content": seed.input},
                             {"role": "assistant", "content": chat_reply_text(seed.edit, seed.output)}]}
    if fmt == "completion":
        return {"prompt": f"{seed.input}{PROMPT_SEP}", "completion": completion_text(seed.edit, seed.output)}
    raise ValueError(f"unknown fine-tuning format {fmt!r}; use chat or completion")
