"""The one instruction policy: which side of an example gets its task instruction, and the
prompts an exported model carries so that mteb applies the same instructions.

Training (the collator), the exported model's ``prompts`` and evaluation all go through
:class:`InstructionPolicy`, so a model never meets at evaluation an input shape it did not
see in training.

How mteb (2.26) picks a prompt, which fixes what can be expressed
(``mteb.models.abs_encoder.get_prompt_name``): retrieval and reranking encode queries with
``prompt_type=query`` and documents with ``prompt_type=document``; STS, pair classification,
classification and clustering encode *every* text with ``prompt_type=None``, so the prompt
found is the task name's, else the task type's (``"STS"``), for both sides alike. A symmetric
task can therefore give the instruction to both sides or to neither, never to one side only.

- asymmetric task types (retrieval, reranking): the query gets the instruction, documents
  never do (E5-mistral, KaLM-Embedding, Wang et al. 2023 "Improving Text Embeddings with
  Large Language Models" section 3);
- symmetric task types: ``symmetric="both"`` instructs both texts (what E5-mistral and
  KaLM's mteb evaluation do for STS, classification and clustering), ``symmetric="none"``
  instructs neither; a mapping chooses per type (``{"sts": "none", "pair_classification":
  "none"}``: pair tasks without, single-text tasks with instructions).

Example::

    policy = InstructionPolicy()
    policy.query_text("retrieval", "Given a question, retrieve answers", "how to descale")
    # 'Instruct: Given a question, retrieve answers\\nQuery: how to descale'
    policy.document_text("retrieval", "Given a question, retrieve answers", "Use vinegar.")   # 'Use vinegar.'
    policy.mteb_prompts({"retrieval": "Given a question, retrieve answers", "sts": "Retrieve similar text."})
    # {'Retrieval-query': 'Instruct: ...\\nQuery: ', 'Retrieval-document': '', 'STS': 'Instruct: ...\\nQuery: ',
    #  'query': 'Instruct: ...\\nQuery: ', 'document': ''}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping, Union, get_args

# kalm task type -> mteb TaskMetadata.type
MTEB_TYPE: dict[str, str] = {
    "retrieval": "Retrieval", "reranking": "Reranking", "sts": "STS",
    "pair_classification": "PairClassification", "classification": "Classification", "clustering": "Clustering",
}
ASYMMETRIC: frozenset[str] = frozenset({"retrieval", "reranking"})
SymmetricType = Literal["sts", "pair_classification", "classification", "clustering"]
SYMMETRIC: frozenset[str] = frozenset(get_args(SymmetricType))
DEFAULT_FORMAT = "Instruct: {instruction}\nQuery: {query}"
Choice = Literal["both", "none"]
# TrainConfig's default (bench/instruction_policy.py, README "Instruction policy"): on a decoder trained as an
# embedder from scratch (SmolLM2-135M, 3 seeds), STS scored higher without instructions and Banking77 with them.
PAIRS_UNINSTRUCTED: dict[str, Choice] = {"sts": "none", "pair_classification": "none"}
# "both"/"none" for every symmetric type, or one choice per type (a type left out: "both").
Symmetric = Union[Choice, Mapping[str, Choice]]


@dataclass(frozen=True)
class InstructionPolicy:
    """Decides, per task type, which texts carry the instruction.

    Args:
        format: how an instruction and a text are joined; must contain ``{instruction}`` and
            ``{query}`` (the text); the prompt is the part before the text.
        symmetric: ``"both"`` or ``"none"``: symmetric task types instruct both sides or neither;
            or a mapping from symmetric task type to ``"both"``/``"none"`` (types left out: ``"both"``).
        enabled: False = no instructions anywhere (a model trained without them).

    Raises:
        ValueError: a format without ``{instruction}``/``{query}`` or with text after ``{query}``
            (sentence-transformers prompts are prefixes), or an unknown ``symmetric`` value.
    """

    format: str = DEFAULT_FORMAT
    symmetric: Symmetric = "both"
    enabled: bool = True

    def __post_init__(self) -> None:
        if "{instruction}" not in self.format or not self.format.endswith("{query}"):
            raise ValueError(f"instruction format {self.format!r} must contain '{{instruction}}' and end with "
                             "'{query}' (the instruction is a prefix, as sentence-transformers prompts are)")
        choices = self.symmetric.values() if isinstance(self.symmetric, Mapping) else [self.symmetric]
        if any(c not in get_args(Choice) for c in choices):
            raise ValueError(f"symmetric={self.symmetric!r}: use 'both' or 'none' (for all symmetric task types, "
                             "or per type)")
        unknown = set(self.symmetric) - SYMMETRIC if isinstance(self.symmetric, Mapping) else set()
        if unknown:
            raise ValueError(f"symmetric={dict(self.symmetric)!r}: {sorted(unknown)} are not symmetric task types; "
                             f"use {sorted(SYMMETRIC)}")

    def choice(self, task_type: str) -> Choice:
        """``"both"`` or ``"none"`` for a symmetric ``task_type``."""
        if isinstance(self.symmetric, Mapping):
            return self.symmetric.get(task_type, "both")
        return self.symmetric

    @property
    def symmetric_key(self) -> str:
        """A stable text for cache keys: ``"both"``/``"none"`` when one choice holds for every symmetric
        type, else ``"classification=both,clustering=both,pair_classification=none,sts=none"``."""
        per_type = {t: self.choice(t) for t in sorted(SYMMETRIC)}
        if len(set(per_type.values())) == 1:
            return next(iter(per_type.values()))
        return ",".join(f"{t}={c}" for t, c in per_type.items())

    def sides(self, task_type: str) -> tuple[bool, bool]:
        """(query instructed, document instructed) for ``task_type``."""
        if task_type not in MTEB_TYPE:
            raise ValueError(f"unknown task type {task_type!r}; use one of {sorted(MTEB_TYPE)}")
        if not self.enabled:
            return False, False
        if task_type in ASYMMETRIC:
            return True, False
        both = self.choice(task_type) == "both"
        return both, both

    def prompt(self, instruction: str) -> str:
        """The prefix put before a text: ``format`` with the instruction filled in and no text."""
        return self.format.format(instruction=instruction, query="") if instruction else ""

    def query_text(self, task_type: str, instruction: str, text: str) -> str:
        return self.prompt(instruction) + text if self.sides(task_type)[0] else text

    def document_text(self, task_type: str, instruction: str, text: str) -> str:
        """A positive or negative of an example of ``task_type``."""
        return self.prompt(instruction) + text if self.sides(task_type)[1] else text

    def mteb_prompts(self, instructions: Mapping[str, str]) -> dict[str, str]:
        """Prompts for an exported model, under names mteb reads.

        Args:
            instructions: kalm task type -> the instruction trained with for it (e.g. the most
                common one of that type's examples).

        Returns:
            ``{"Retrieval-query": p, "Retrieval-document": "", "STS": p, ..., "query": p, "document": ""}``:
            ``<Type>-query``/``<Type>-document`` for asymmetric types, ``<Type>`` for symmetric ones
            (when instructed), and the retrieval prompt as the default ``query`` prompt. Empty when
            the policy is disabled.
        """
        if not self.enabled:
            return {}
        prompts: dict[str, str] = {}
        for task_type, instruction in sorted(instructions.items()):
            if not instruction:
                continue
            q, d = self.sides(task_type)
            name = MTEB_TYPE[task_type]
            if task_type in ASYMMETRIC:
                prompts[f"{name}-query"] = self.prompt(instruction)
                prompts[f"{name}-document"] = ""
            elif q and d:
                prompts[name] = self.prompt(instruction)
        default = instructions.get("retrieval") or instructions.get("reranking")
        if default:
            prompts["query"], prompts["document"] = self.prompt(default), ""
        return prompts
