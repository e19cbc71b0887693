"""OpenAI-compatible HTTP backend (``vllm serve``, llama.cpp's server, or any compatible API).

Async with at most ``openai.max_in_flight`` requests in flight (a semaphore), retries with
exponential backoff and jitter on connection errors, timeouts, 408/409/429 and 5xx (the openai
client's own retry loop, ``max_retries``), a per-request timeout, and a JSON-schema
``response_format``. The API key comes from the environment variable named in the config, or
is passed in by the caller (tasks/generate.py resolves a Prefect Secret block); it is never
logged or put in an error message.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from kalm.synth.backends.base import Chat
from kalm.synth.config import GenerateConfig


class OpenAIBackend:
    def __init__(self, cfg: GenerateConfig, api_key: str | None = None):
        self.opts = cfg.openai
        self.model_name = cfg.openai.model_name or cfg.model
        self.top_p = cfg.top_p
        # Local servers need no key; the openai client insists on a non-empty string.
        self._api_key = api_key or os.environ.get(cfg.openai.api_key_env) or "EMPTY"

    def __repr__(self) -> str:  # no key in reprs, logs or tracebacks
        return f"OpenAIBackend(base_url={self.opts.base_url!r}, model={self.model_name!r})"

    def generate(self, chats: list[Chat], schema: dict[str, Any], max_new_tokens: int, temperature: float,
                 seed: int) -> list[str]:
        return asyncio.run(self._generate(chats, schema, max_new_tokens, temperature, seed))

    async def _generate(self, chats, schema, max_new_tokens, temperature, seed) -> list[str]:
        import openai

        client = openai.AsyncOpenAI(base_url=self.opts.base_url, api_key=self._api_key,
                                    timeout=self.opts.timeout_s, max_retries=self.opts.max_retries)
        limit = asyncio.Semaphore(self.opts.max_in_flight)
        if self.opts.response_format == "json_object":  # llama-cpp-python's dialect
            response_format = {"type": "json_object", "schema": schema}
        else:
            response_format = {"type": "json_schema",
                               "json_schema": {"name": "answer", "schema": schema, "strict": True}}

        async def one(i: int, chat: Chat) -> str:
            async with limit:
                try:
                    r = await client.chat.completions.create(
                        model=self.model_name, messages=chat, max_tokens=max_new_tokens, temperature=temperature,
                        top_p=self.top_p, seed=seed + i, response_format=response_format)
                except openai.BadRequestError:
                    # This prompt is refused (too long, unsupported schema...): an empty answer,
                    # counted as a drop; transient errors were retried and still raise.
                    return ""
                return r.choices[0].message.content or ""

        try:
            return list(await asyncio.gather(*(one(i, c) for i, c in enumerate(chats))))
        finally:
            await client.close()
