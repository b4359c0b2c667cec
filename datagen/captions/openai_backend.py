"""The LLM backend: any OpenAI-compatible endpoint, chat (JSON reply) or completion models.

Requests of a shard run concurrently on one AsyncOpenAI client, at most ``concurrency`` in
flight, each under the retry discipline of openai_client.py. The few-shot examples and the
sampling seed of a caption are drawn from (run seed, source id), so a re-run sends the same
prompts; identical replies then need an endpoint that honours ``seed``.
"""
from __future__ import annotations

import asyncio
import random

import openai

from datagen.config import OpenAIBackendConfig
from datagen.records import SourceCaption, seed_from

from .backends import Draft
from .openai_client import CallCounters, RequestRejected, api_key, call_with_retries, make_client
from .prompts import (CHAT_PROMPT_VERSION, COMPLETION_PROMPT_VERSION, END, SeedTriple, chat_messages,
                      chat_response_format, choose_examples, completion_prompt)
from .replies import read_reply


class OpenAIBackend:
    name = "openai"

    def __init__(self, cfg: OpenAIBackendConfig, seeds: list[SeedTriple], run_seed: int):
        api_key(cfg)  # fail at start, naming the variable, rather than at the first request
        self.cfg = cfg
        self.seeds = seeds
        self.run_seed = run_seed
        self.model = cfg.model
        self.prompt_version = CHAT_PROMPT_VERSION if cfg.api == "chat" else COMPLETION_PROMPT_VERSION
        self.counters = CallCounters()

    def draft(self, sources: list[SourceCaption]) -> list[Draft]:
        if not sources:
            return []
        return asyncio.run(self._draft_all(sources))

    async def _draft_all(self, sources: list[SourceCaption]) -> list[Draft]:
        client = make_client(self.cfg)
        semaphore = asyncio.Semaphore(self.cfg.concurrency)
        try:
            return list(await asyncio.gather(*(self._draft_one(client, semaphore, s) for s in sources)))
        finally:
            await client.close()

    async def _draft_one(self, client: openai.AsyncOpenAI, semaphore: asyncio.Semaphore,
                         source: SourceCaption) -> Draft:
        examples = choose_examples(self.seeds, self.cfg.few_shot,
                                   random.Random(seed_from(self.run_seed, source.source_id, "few-shot")))
        seed = seed_from(self.run_seed, source.source_id, "sampling") & 0x7FFFFFFF
        async with semaphore:
            try:
                text, refused = await call_with_retries(
                    lambda: self._request(client, source.caption, examples, seed),
                    self.cfg, self.counters, what=f"{self.cfg.api} request for source {source.source_id}")
            except RequestRejected:
                return Draft(source, source.caption, rejection="request_rejected")
        if refused:
            return Draft(source, source.caption, rejection="model_refused")
        reading = read_reply(text)
        return Draft(source, source.caption, reading.edit, reading.output, rejection=reading.rejection)

    async def _request(self, client: openai.AsyncOpenAI, caption: str, examples: list[SeedTriple],
                       seed: int) -> tuple[str | None, bool]:
        """(reply text, refused) of one request."""
        cfg = self.cfg
        sampling = dict(model=cfg.model, temperature=cfg.temperature, top_p=cfg.top_p,
                        max_tokens=cfg.max_tokens, frequency_penalty=cfg.frequency_penalty)
        if cfg.send_seed:
            sampling["seed"] = seed
        if cfg.api == "chat":
            response_format = chat_response_format(cfg.response_format)
            extra = {"response_format": response_format} if response_format else {}
            resp = await client.chat.completions.create(messages=chat_messages(caption, examples), **sampling, **extra)
            self.counters.add_usage(resp.usage)
            if not resp.choices:
                return None, False
            message = resp.choices[0].message
            return message.content, bool(getattr(message, "refusal", None))
        resp = await client.completions.create(prompt=completion_prompt(caption, examples), stop=[END], **sampling)
        self.counters.add_usage(resp.usage)
        return (resp.choices[0].text if resp.choices else None), False
