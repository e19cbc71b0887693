"""OpenAI-compatible HTTP backend (``vllm serve``, llama.cpp's server, or any compatible API).

Async with at most ``openai.max_in_flight`` requests in flight (a semaphore), retries with
exponential backoff and jitter on connection errors, timeouts, 408/409/429 and 5xx (the openai
client's own retry loop, ``max_retries``), a per-request timeout, and a JSON-schema
``response_format``. A 400 Bad Request (or 422) is the server refusing that request: a single one (a
prompt too long for its context) is counted as ``request_rejected``; once more than
``openai.max_rejected`` requests were refused and they outnumber the answered ones (a schema the
server does not take fails every request), the call fails with the server's own message instead
of returning a shard of empty answers. The API key comes from the environment variable named in
the config, or is passed in by the caller (tasks/generate.py resolves a Prefect Secret block); it
is never logged or put in an error message.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from kalm.synth.backends.base import Budgets, Chat, Schemas, per_chat
from kalm.synth.config import GenerateConfig
from kalm.synth.validate import RejectedAnswer


class RequestsRejected(RuntimeError):
    """The server refused (400) the requests systematically; a retry cannot fix it."""


def _message(err: Exception) -> str:
    """The provider's own error text (``error.message`` of the body), else the exception's."""
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return str(err)


class OpenAIBackend:
    def __init__(self, cfg: GenerateConfig, api_key: str | None = None):
        self.opts = cfg.openai
        self.model_name = cfg.openai.model_name or cfg.model
        self.top_p = cfg.top_p
        # Local servers need no key; the openai client insists on a non-empty string.
        self._api_key = api_key or os.environ.get(cfg.openai.api_key_env) or "EMPTY"

    def __repr__(self) -> str:  # no key in reprs, logs or tracebacks
        return f"OpenAIBackend(base_url={self.opts.base_url!r}, model={self.model_name!r})"

    def generate(self, chats: list[Chat], schema: Schemas, max_new_tokens: Budgets, temperature: float,
                 seed: int) -> list[str]:
        return asyncio.run(self._generate(chats, schema, max_new_tokens, temperature, seed))

    def _response_format(self, schema: dict[str, Any]) -> dict[str, Any]:
        if self.opts.response_format == "json_object":  # llama-cpp-python's dialect
            return {"type": "json_object", "schema": schema}
        return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}

    async def _generate(self, chats, schema, max_new_tokens, temperature, seed) -> list[str]:
        import openai

        schemas, budgets = per_chat(chats, schema, max_new_tokens)
        client = openai.AsyncOpenAI(base_url=self.opts.base_url, api_key=self._api_key,
                                    timeout=self.opts.timeout_s, max_retries=self.opts.max_retries)
        limit = asyncio.Semaphore(self.opts.max_in_flight)
        tally = {"ok": 0, "rejected": 0}

        async def one(i: int, chat: Chat) -> str:
            async with limit:
                try:
                    r = await client.chat.completions.create(
                        model=self.model_name, messages=chat, max_tokens=budgets[i], temperature=temperature,
                        top_p=self.top_p, seed=seed + i, response_format=self._response_format(schemas[i]))
                except (openai.BadRequestError, openai.UnprocessableEntityError) as e:  # 400, 422: this request
                    tally["rejected"] += 1
                    message = _message(e)
                    if tally["rejected"] > self.opts.max_rejected and tally["rejected"] > tally["ok"]:
                        raise RequestsRejected(
                            f"the server at {self.opts.base_url} refused {tally['rejected']} of "
                            f"{tally['rejected'] + tally['ok']} requests with HTTP {e.status_code}: {message!r}. "
                            "If it does not take the JSON schema (keywords such as minLength, maxLength, pattern), "
                            "set generate.openai.response_format to the form it takes ('json_object' for "
                            "llama-cpp-python) or serve the model with vLLM or SGLang") from None
                    return RejectedAnswer(message)
                tally["ok"] += 1
                return r.choices[0].message.content or ""

        tasks = [asyncio.ensure_future(one(i, c)) for i, c in enumerate(chats)]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for t in tasks:  # a systematic refusal stops the rest at once
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await client.close()
