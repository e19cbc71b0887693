"""LLM backends behind one interface: ``generate(chats, schema, ...) -> list[str]`` (raw JSON texts)."""

from __future__ import annotations

from kalm.synth.backends.base import Backend
from kalm.synth.config import GenerateConfig


def make_backend(cfg: GenerateConfig, api_key: str | None = None) -> Backend:
    if cfg.backend == "transformers":
        from kalm.synth.backends.hf import TransformersBackend

        return TransformersBackend(cfg)
    if cfg.backend == "openai":
        from kalm.synth.backends.openai_http import OpenAIBackend

        return OpenAIBackend(cfg, api_key=api_key)
    if cfg.backend == "vllm":
        from kalm.synth.backends.vllm import VLLMBackend

        return VLLMBackend(cfg)
    raise ValueError(f"generate.backend {cfg.backend!r}: use transformers, openai or vllm")
