"""vLLM offline backend: ``vllm.LLM.chat`` in chunks of ``batch_size`` prompts, each with its own
JSON schema (structured outputs), token budget and seed.

Written to vLLM 0.33.0's API (read from its source):

- ``LLM(model, tensor_parallel_size=, dtype=, seed=, gpu_memory_utilization=,
  structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": True})``. Whitespace
  is an engine setting: vLLM reads ``structured_outputs_config.disable_any_whitespace`` only, never
  the per-request ``StructuredOutputsParams`` field of that name, and its config refuses the flag
  with ``backend: "auto"`` ("only supported for xgrammar and guidance backends"), so the backend
  is named (``vllm.structured_outputs_backend``: xgrammar, the engine the transformers backend
  uses too, or guidance). A named backend has no fallback: a schema it cannot compile fails the
  whole call, so every schema the stage sends is one both compile (tests/test_synth_vllm_api.py
  checks them with vLLM's own validator); e.g. the persona schema bounds its length inside its
  ``pattern``, as xgrammar cannot take a pattern beside minLength/maxLength.
- ``SamplingParams(max_tokens=, temperature=, top_p=, seed=, repetition_penalty=,
  structured_outputs=StructuredOutputsParams(json=schema))``. vLLM has no n-gram ban
  (``no_repeat_ngram_size``): the config refuses it for this backend.
- ``LLM(data_parallel_size > 1)`` is refused for in-process use, so data parallelism is one
  engine per GPU group, each in its own worker on different shards (:func:`visible_gpus`).

vLLM loads no GGUF: give a transformers folder or hub id (kalm.models dequantizes GGUF references
into a folder).
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

from kalm.synth.backends.base import Budgets, Chat, Schemas, per_chat
from kalm.synth.config import GenerateConfig

_CLAIM: Optional[Any] = None  # the open lock file: held for the life of the process


def claim_gpus(groups: int, per_group: int, lock_dir: Optional[Path] = None) -> int:
    """The first free group of ``per_group`` GPUs out of ``groups`` on THIS node, held for the life of
    the process (an advisory file lock, freed when the process exits, so a crashed worker's GPUs are
    taken again by its replacement). Node-local by design: it serves the ``processes`` task runner,
    whose workers all run on one node; across nodes the scheduler assigns GPUs (Ray's ``num_gpus``
    sets ``CUDA_VISIBLE_DEVICES``) and nothing is claimed."""
    global _CLAIM
    lock_dir = Path(lock_dir or os.environ.get("KALM_GPU_LOCK_DIR", tempfile.gettempdir()))
    for g in range(groups):
        f = open(lock_dir / f"kalm-gpu-group-{g}-of-{groups}x{per_group}.lock", "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        _CLAIM = f
        return g
    raise RuntimeError(f"all {groups} GPU groups of this node are taken: run at most generate.vllm.data_parallel_size "
                       f"worker processes (generate.max_workers <= {groups})")


def visible_gpus(cfg: GenerateConfig, lock_dir: Optional[Path] = None) -> Optional[str]:
    """The ``CUDA_VISIBLE_DEVICES`` this worker's engine runs on.

    A value already set (by Ray for a task that requested GPUs, by Slurm or Kubernetes, or by the
    user) is kept as it is; it must name at least ``tensor_parallel_size`` GPUs. Unset, with one
    GPU group, every GPU of the node is visible (None). Unset with several groups, a ``processes``
    worker claims a free group on its node and sets the variable; any other runner must have set it.
    """
    v = cfg.vllm
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [x for x in visible.split(",") if x.strip()]
        if len(ids) < v.tensor_parallel_size:
            raise RuntimeError(
                f"CUDA_VISIBLE_DEVICES={visible!r} gives this worker {len(ids)} GPU(s) but "
                f"generate.vllm.tensor_parallel_size is {v.tensor_parallel_size}: the task runner must give each "
                "shard task that many GPUs (Ray: num_gpus), or lower tensor_parallel_size")
        return visible
    if v.data_parallel_size == 1:
        return None
    if cfg.task_runner != "processes":
        raise RuntimeError(
            f"generate.vllm.data_parallel_size {v.data_parallel_size} with task_runner {cfg.task_runner!r}: this "
            "worker was given no GPUs (CUDA_VISIBLE_DEVICES is unset); the runner must request "
            f"{v.tensor_parallel_size} GPU(s) per shard task")
    g = claim_gpus(v.data_parallel_size, v.tensor_parallel_size, lock_dir)
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(
        str(g * v.tensor_parallel_size + k) for k in range(v.tensor_parallel_size))
    return os.environ["CUDA_VISIBLE_DEVICES"]


def engine_args(cfg: GenerateConfig) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` for this config (the model path is added by the caller)."""
    v = cfg.vllm
    return {"tensor_parallel_size": v.tensor_parallel_size, "gpu_memory_utilization": v.gpu_memory_utilization,
            "dtype": v.dtype, "seed": cfg.seed,
            "structured_outputs_config": {"backend": v.structured_outputs_backend, "disable_any_whitespace": True},
            **({"max_model_len": v.max_model_len} if v.max_model_len else {})}


def sampling_params(cfg: GenerateConfig, schemas: list[dict[str, Any]], budgets: list[int], temperature: float,
                    seed: int) -> list[Any]:
    """One ``SamplingParams`` per prompt: its schema, budget and seed (vLLM seeds per request, so
    reruns are identical however the engine batches the prompts)."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    return [SamplingParams(max_tokens=budget, temperature=temperature, top_p=cfg.top_p, seed=seed + i,
                           repetition_penalty=cfg.repetition_penalty,
                           structured_outputs=StructuredOutputsParams(json=schema))
            for i, (schema, budget) in enumerate(zip(schemas, budgets))]


class VLLMBackend:
    """One ``vllm.LLM`` per worker process, on its GPU group."""

    def __init__(self, cfg: GenerateConfig):
        try:
            from vllm import LLM
        except ImportError as e:  # the GPU image installs it; CPU machines use the transformers backend
            raise RuntimeError("generate.backend 'vllm' needs vllm installed (pip install -e '.[gpu]', "
                               "or the GPU Docker image); use backend 'transformers' on CPU") from e
        from kalm.models import transformers_path

        self.cfg = cfg
        self.gpus = visible_gpus(cfg)
        self.llm = LLM(model=str(transformers_path(cfg.model)), **engine_args(cfg))

    def generate(self, chats: list[Chat], schema: Schemas, max_new_tokens: Budgets, temperature: float,
                 seed: int) -> list[str]:
        schemas, budgets = per_chat(chats, schema, max_new_tokens)
        params = sampling_params(self.cfg, schemas, budgets, temperature, seed)
        out: list[str] = []
        size = self.cfg.batch_size
        for i in range(0, len(chats), size):
            outputs = self.llm.chat(chats[i:i + size], sampling_params=params[i:i + size], use_tqdm=False)
            out += [o.outputs[0].text for o in outputs]
        return out
