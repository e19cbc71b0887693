"""OpenAI-compatible HTTP backend (``vllm serve`` or any compatible server).

Async with a bounded number of requests in flight, retries with exponential backoff (the
openai client's own), timeouts, JSON-schema ``response_format``. The API key is read from the
environment variable named in the config (or passed in, e.g. from a Prefect Secret block) and
never logged.
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
        self.api_key = api_key or os.environ.get(cfg.openai.api_key_env) or "EMPTY"  # local servers need none

    def generate(self, chats: list[Chat], schema: dict[str, Any], max_new_tokens: int, temperature: float,
                 seed: int) -> list[str]:
        return asyncio.run(self._generate(chats, schema, max_new_tokens, temperature, seed))

    async def _generate(self, chats, schema, max_new_tokens, temperature, seed) -> list[str]:
        from openai import AsyncOpenAI

        client = AsyncOpenAI(base_url=self.opts.base_url, api_key=self.api_key, timeout=self.opts.timeout_s,
                             max_retries=self.opts.max_retries)
        limit = asyncio.Semaphore(self.opts.max_in_flight)
        response_format = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}

        async def one(i: int, chat: Chat) -> str:
            async with limit:
                r = await client.chat.completions.create(
                    model=self.model_name, messages=chat, max_tokens=max_new_tokens, temperature=temperature,
                    seed=seed + i, response_format=response_format)
                return r.choices[0].message.content or ""

        try:
            return list(await asyncio.gather(*(one(i, c) for i, c in enumerate(chats))))
        finally:
            await client.close()
