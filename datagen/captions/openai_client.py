"""One OpenAI-compatible client factory and the retry discipline every request goes through.

429s, 5xx, timeouts and dropped connections are retried with exponential backoff (and the
server's Retry-After when it sends one); a 400/422 rejects only the caption it was about;
auth and not-found errors stop the shard at once. The API key is read from the environment
variable NAMED in the config and never logged, stored or put in an error message.
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Awaitable, Callable, TypeVar

import openai

from datagen.config import ConfigError, OpenAIBackendConfig

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRYABLE_STATUS = {408, 409, 429}   # plus every 5xx: the statuses the openai client itself retries
REJECTING_STATUS = {400, 413, 422}   # the request is wrong for this caption, not for the run


class BackendError(RuntimeError):
    """The endpoint cannot serve this run (bad key, unknown model, retries exhausted)."""


class RequestRejected(Exception):
    """The endpoint refused one request (HTTP 400/422): the caption is rejected, the run goes on."""


@dataclass
class CallCounters:
    """What the requests of one shard cost: the figures behind retries and cost estimates."""

    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retry_reasons: Counter = field(default_factory=Counter)

    def add_usage(self, usage) -> None:
        if usage is not None:
            self.prompt_tokens += getattr(usage, "prompt_tokens", 0) or 0
            self.completion_tokens += getattr(usage, "completion_tokens", 0) or 0

    def as_extra(self) -> dict:
        return {"requests": self.requests, "retries": self.retries, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "retry_reasons": dict(self.retry_reasons)}


def api_key(cfg: OpenAIBackendConfig) -> str:
    key = os.environ.get(cfg.api_key_env, "")
    if not key:
        raise ConfigError(f"captions.openai.api_key_env: environment variable {cfg.api_key_env} is not set; "
                          f"it must hold the API key for {cfg.base_url} (any non-empty value for a local "
                          f"server that needs none)")
    return key


def make_client(cfg: OpenAIBackendConfig) -> openai.AsyncOpenAI:
    # max_retries=0: retries are ours, so that they are counted and follow the config.
    return openai.AsyncOpenAI(api_key=api_key(cfg), base_url=cfg.base_url, timeout=cfg.timeout_s, max_retries=0)


def _retry_after(err: openai.APIStatusError) -> float | None:
    try:
        return float(err.response.headers.get("retry-after"))
    except (TypeError, ValueError, AttributeError):
        return None


def backoff_delay(cfg: OpenAIBackendConfig, attempt: int, retry_after: float | None = None) -> float:
    """Exponential backoff with jitter: ~backoff_s, 2*backoff_s, 4*backoff_s ... capped."""
    delay = min(cfg.max_backoff_s, cfg.backoff_s * 2 ** attempt) * random.uniform(0.5, 1.0)
    if retry_after is not None:
        delay = max(delay, min(retry_after, cfg.max_backoff_s))
    return delay


async def call_with_retries(fn: Callable[[], Awaitable[T]], cfg: OpenAIBackendConfig,
                            counters: CallCounters, what: str) -> T:
    """``await fn()`` under the retry discipline; raises RequestRejected or BackendError."""
    attempt = 0
    while True:
        counters.requests += 1
        retry_after = None
        try:
            return await fn()
        except openai.APITimeoutError:
            reason = "timeout"
        except openai.APIConnectionError:
            reason = "connection"
        except openai.APIStatusError as e:
            status = e.status_code
            if status in RETRYABLE_STATUS or status >= 500:
                reason, retry_after = f"http_{status}", _retry_after(e)
            elif status in REJECTING_STATUS:
                raise RequestRejected(f"{what}: HTTP {status}: {_short(e)}") from None
            else:  # 401, 403, 404, ...: nothing later requests could fix
                raise BackendError(f"{what}: HTTP {status} from {cfg.base_url} (model {cfg.model!r}, key from "
                                   f"${cfg.api_key_env}): {_short(e)}") from None
        if attempt >= cfg.max_retries:
            raise BackendError(f"{what}: gave up after {cfg.max_retries} retries (last: {reason}) at {cfg.base_url}")
        counters.retries += 1
        counters.retry_reasons[reason] += 1
        delay = backoff_delay(cfg, attempt, retry_after)
        log.debug("%s: %s, retry %d/%d in %.2fs", what, reason, attempt + 1, cfg.max_retries, delay)
        await asyncio.sleep(delay)
        attempt += 1


def _short(err: openai.APIStatusError, limit: int = 300) -> str:
    text = str(getattr(err, "message", "") or err)
    return text if len(text) <= limit else text[:limit] + "..."
