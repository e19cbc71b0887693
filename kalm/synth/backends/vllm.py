"""vLLM offline backend: ``vllm.LLM.chat`` in large batches with JSON-schema structured outputs.

Written to vLLM 0.33.0's API (read from its source): ``LLM(model, tensor_parallel_size=,
dtype=, seed=, gpu_memory_utilization=, structured_outputs_config={"backend": "xgrammar"},
**engine_args)`` and ``SamplingParams(structured_outputs=StructuredOutputsParams(json=...))``
(the old ``guided_*`` API is gone). Tensor parallelism inside one worker; data parallelism by
running one worker per GPU over different shards: with ``vllm.data_parallel_size: N`` and the
``processes`` task runner (``max_workers: N``), each worker process claims one free GPU group
(:func:`claim_gpus`) before it loads the model. vLLM loads no GGUF: give a transformers
folder or hub id (kalm.models dequantizes GGUF references into a folder).
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

from kalm.synth.backends.base import Chat
from kalm.synth.config import GenerateConfig

_CLAIM: Optional[Any] = None  # the open lock file: held for the life of the process


def claim_gpus(groups: int, per_group: int, lock_dir: Optional[Path] = None) -> Optional[int]:
    """Pin this process to the first free group of ``per_group`` GPUs out of ``groups``.

    Sets ``CUDA_VISIBLE_DEVICES`` (unless the user set it) and returns the group index, or
    None when ``groups`` is 1. Claims are advisory file locks, released when the process
    exits, so a crashed worker frees its GPUs and a restarted one takes them again.
    """
    global _CLAIM
    if groups <= 1:
        return None
    lock_dir = Path(lock_dir or os.environ.get("KALM_GPU_LOCK_DIR", tempfile.gettempdir()))
    for g in range(groups):
        f = open(lock_dir / f"kalm-gpu-group-{g}.lock", "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        _CLAIM = f
        if "KALM_KEEP_CUDA_VISIBLE_DEVICES" not in os.environ:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g * per_group + k) for k in range(per_group))
        return g
    raise RuntimeError(f"all {groups} GPU groups are taken: run at most generate.vllm.data_parallel_size "
                       f"worker processes (generate.max_workers <= {groups})")


class VLLMBackend:
    """One ``vllm.LLM`` per worker process; every shard's prompts go in one ``chat`` call."""

    def __init__(self, cfg: GenerateConfig):
        try:
            from vllm import LLM
        except ImportError as e:  # the GPU image installs it; CPU machines use the transformers backend
            raise RuntimeError("generate.backend 'vllm' needs vllm installed (pip install 'kalm-pipeline[vllm]', "
                               "or the GPU Docker image); use backend 'transformers' on CPU") from e
        from kalm.models import transformers_path

        v = cfg.vllm
        self.gpu_group = claim_gpus(v.data_parallel_size, v.tensor_parallel_size)
        extra: dict[str, Any] = {"max_model_len": v.max_model_len} if v.max_model_len else {}
        self.llm = LLM(model=str(transformers_path(cfg.model)), tensor_parallel_size=v.tensor_parallel_size,
                       gpu_memory_utilization=v.gpu_memory_utilization, dtype=v.dtype, seed=cfg.seed,
                       structured_outputs_config={"backend": "xgrammar"}, **extra)
        self.top_p = cfg.top_p
        self.repetition_penalty = cfg.repetition_penalty

    def generate(self, chats: list[Chat], schema: dict[str, Any], max_new_tokens: int, temperature: float,
                 seed: int) -> list[str]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        # One seed per prompt (vLLM seeds per request): reruns are identical even when the
        # engine batches the prompts differently.
        params = [SamplingParams(max_tokens=max_new_tokens, temperature=temperature, top_p=self.top_p,
                                 seed=seed + i, repetition_penalty=self.repetition_penalty,
                                 structured_outputs=StructuredOutputsParams(json=schema, disable_any_whitespace=True))
                  for i in range(len(chats))]
        outputs = self.llm.chat(chats, sampling_params=params, use_tqdm=False)
        return [o.outputs[0].text for o in outputs]
