"""The LLM backend: any OpenAI-compatible endpoint, chat (JSON reply) or completion models.

Requests of a shard run concurrently on one AsyncOpenAI client, at most ``concurrency`` in
flight, each under the retry discipline of openai_client.py. The few-shot examples and the
sampling seed of a caption are drawn from (run seed, source id), so a re-run sends the same
prompts; identical replies then need an endpoint that honours ``seed``.

Two guards keep a systematic failure from passing for a run of bad captions: ``probe`` sends
one request like the run's before any shard starts, and a 4xx there stops the stage with the
server's message and a hint; and a shard where most requests get the same 4xx raises instead
of being written (so it is not marked done, and a re-run asks again).
"""
from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter

import openai

from datagen.config import ConfigError, OpenAIBackendConfig
from datagen.records import SourceCaption, seed_from

from .backends import Draft
from .openai_client import (BackendError, CallCounters, RequestRejected, api_key, call_with_retries, hint_for,
                            make_client)
from .prompts import (CHAT_PROMPT_VERSION, COMPLETION_PROMPT_VERSION, END, SeedTriple, chat_messages,
                      chat_response_format, choose_examples, completion_prompt)
from .replies import Reading, read_reply

log = logging.getLogger(__name__)

# A shard stops when more than this fraction of its requests got one and the same 4xx.
SYSTEMATIC_FRACTION = 0.5


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
        self.request_errors: Counter[tuple[int, str]] = Counter()  # (status, message) of the 4xx answers

    def draft(self, sources: list[SourceCaption]) -> list[Draft]:
        if not sources:
            return []
        self.request_errors.clear()
        drafts = asyncio.run(self._draft_all(sources))
        self._stop_if_systematic(len(sources))
        return drafts

    def _stop_if_systematic(self, sent: int) -> None:
        if not self.request_errors:
            return
        (status, message), n = self.request_errors.most_common(1)[0]
        if n > 1 and n > SYSTEMATIC_FRACTION * sent:
            raise BackendError(f"{n} of {sent} {self.cfg.api} requests to {self.cfg.base_url} (model "
                               f"{self.cfg.model!r}) got the same answer, HTTP {status}: {message.rstrip('. ')}"
                               f"{hint_for(status, message, self.cfg)}")

    def probe(self) -> Reading:
        """One request like the run's (the first seed triple's caption): raise ConfigError on a 4xx.

        Run once before the stage sends its requests; its reply is only logged (a model that writes
        nonsense is the validator's business, not a reason to stop).
        """
        caption = self.seeds[0].input
        probe_source = SourceCaption("probe", caption)
        self.request_errors.clear()
        try:
            draft = asyncio.run(self._probe_one(probe_source))
        except BackendError as e:  # auth, unknown route or model, retries exhausted
            raise ConfigError(f"captions: the probe request failed, before any caption was sent: {e}") from None
        if self.request_errors:
            status, message = next(iter(self.request_errors))
            raise ConfigError(
                f"captions: {self.cfg.base_url} refused the probe request ({self.cfg.api}, model {self.cfg.model!r}, "
                f"response_format {self.cfg.response_format if self.cfg.api == 'chat' else '-'}) with HTTP {status}: "
                f"{message.rstrip('. ')}{hint_for(status, message, self.cfg)}. Every request of the run would "
                f"get it: nothing was sent for the source captions and no shard is marked done.")
        reading = Reading(draft.instruction, draft.output_caption, draft.rejection)
        log.info("captions: probe request to %s answered; read as %s", self.cfg.base_url,
                 reading.rejection or f"edit {reading.edit!r} -> {reading.output!r}")
        return reading

    async def _probe_one(self, source: SourceCaption) -> Draft:
        client = make_client(self.cfg)
        try:
            return await self._draft_one(client, asyncio.Semaphore(1), source)
        finally:
            await client.close()

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
            except RequestRejected as e:
                self.request_errors[(e.status, e.message)] += 1
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
