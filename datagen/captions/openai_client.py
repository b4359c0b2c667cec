"""One OpenAI-compatible client factory and the retry discipline every request goes through.

429s, 5xx, timeouts and dropped connections are retried with exponential backoff (and the
server's Retry-After when it sends one); a 400/422 rejects only the caption it was about;
auth and not-found errors stop the shard at once. A 4xx that every request would get (a
model name or response format the server does not take) is told apart by ``hint_for``, which
says which ``--set`` to try. The API key is read from the environment variable NAMED in the
config and never logged, stored or put in an error message.
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

    def __init__(self, what: str, status: int, message: str):
        super().__init__(f"{what}: HTTP {status}: {message}")
        self.status, self.message = status, message  # without the caption: equal for a systematic error


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
                raise RequestRejected(what, status, _short(e)) from None
            else:  # 401, 403, 404, ...: nothing later requests could fix
                raise BackendError(f"{what}: HTTP {status} from {cfg.base_url} (model {cfg.model!r}, key from "
                                   f"${cfg.api_key_env}): {_short(e)}{hint_for(status, _short(e), cfg)}") from None
        if attempt >= cfg.max_retries:
            raise BackendError(f"{what}: gave up after {cfg.max_retries} retries (last: {reason}) at {cfg.base_url}")
        counters.retries += 1
        counters.retry_reasons[reason] += 1
        delay = backoff_delay(cfg, attempt, retry_after)
        log.debug("%s: %s, retry %d/%d in %.2fs", what, reason, attempt + 1, cfg.max_retries, delay)
        await asyncio.sleep(delay)
        attempt += 1


def _short(err: openai.APIStatusError, limit: int = 300) -> str:
    """The server's own message: OpenAI-style {"error": {"message"}} or FastAPI-style {"detail"}."""
    body = getattr(err, "body", None)
    text = ""
    if isinstance(body, dict):
        text = body.get("message") or body.get("detail") or ""
        if isinstance(body.get("error"), dict):
            text = text or body["error"].get("message", "")
        elif isinstance(body.get("error"), str):
            text = text or body["error"]
    text = str(text or getattr(err, "message", "") or err)
    return text if len(text) <= limit else text[:limit] + "..."


def hint_for(status: int, message: str, cfg: OpenAIBackendConfig) -> str:
    """What to change when every request gets this error ("" when we cannot tell), as a sentence."""
    text = message.lower()
    if "response_format" in text or "json_schema" in text or "json_object" in text or "json mode" in text:
        other = {"json_schema": "json_object or none", "json_object": "none"}.get(cfg.response_format, "")
        return (f"; the server does not take response_format {cfg.response_format}: try --set "
                f"captions.openai.response_format={other}" if other else "")
    if status in (401, 403):
        return f"; check the key in ${cfg.api_key_env} and that it may use model {cfg.model!r}"
    if "model" in text or cfg.model.lower() in text:  # "Server is pinned to 'x'; requested 'gpt-4o-mini'"
        return f"; check --set captions.openai.model=NAME (the server's GET {cfg.base_url}/models lists them)"
    if "seed" in text:
        return "; try --set captions.openai.send_seed=false"
    if status == 404:
        other = "completions" if cfg.api == "chat" else "chat"
        return (f"; check captions.openai.base_url (usually ends in /v1) and whether the server speaks "
                f"{cfg.api}: --set captions.openai.api={other}")
    if "max_tokens" in text or "context" in text:
        return "; try a smaller --set captions.openai.max_tokens=N or few_shot=N"
    return ""
