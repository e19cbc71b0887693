"""vLLM offline backend: ``vllm.LLM.chat`` in large batches with JSON-schema structured outputs.

Written to vLLM 0.33's API: ``SamplingParams(structured_outputs=StructuredOutputsParams(json=...))``
(the old ``guided_*`` API is gone), the structured-output engine chosen with
``LLM(structured_outputs_config={"backend": "xgrammar"})``. Tensor parallelism inside one
worker; data parallelism by running one worker per GPU over different shards (the shard
tasks of the generate subflow, each pinned with CUDA_VISIBLE_DEVICES by its work pool).
vLLM loads no GGUF: give a transformers folder or hub id (kalm.models dequantizes GGUF).
"""

from __future__ import annotations

from typing import Any

from kalm.synth.backends.base import Chat
from kalm.synth.config import GenerateConfig


class VLLMBackend:
    def __init__(self, cfg: GenerateConfig):
        try:
            from vllm import LLM
        except ImportError as e:  # the GPU image installs it; CPU machines use the transformers backend
            raise RuntimeError("generate.backend 'vllm' needs vllm installed (pip install 'kalm-pipeline[vllm]', "
                               "or the GPU Docker image); use backend 'transformers' on CPU") from e
        from kalm.models import transformers_path

        v = cfg.vllm
        self.llm = LLM(model=transformers_path(cfg.model), tensor_parallel_size=v.tensor_parallel_size,
                       gpu_memory_utilization=v.gpu_memory_utilization, max_model_len=v.max_model_len, dtype=v.dtype,
                       seed=cfg.seed, structured_outputs_config={"backend": "xgrammar"})
        self.top_p = cfg.top_p
        self.repetition_penalty = cfg.repetition_penalty

    def generate(self, chats: list[Chat], schema: dict[str, Any], max_new_tokens: int, temperature: float,
                 seed: int) -> list[str]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        params = SamplingParams(max_tokens=max_new_tokens, temperature=temperature, top_p=self.top_p, seed=seed,
                                repetition_penalty=self.repetition_penalty,
                                structured_outputs=StructuredOutputsParams(json=schema))
        outputs = self.llm.chat(chats, sampling_params=params, use_tqdm=False)
        return [o.outputs[0].text for o in outputs]
