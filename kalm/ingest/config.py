"""Config of the ingest stage: datasets (local files, hub datasets, presets), decontamination, dedup."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import Field, field_validator, model_validator

from kalm.configbase import Strict, TaskType

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MIXTURES_DIR = PROJECT_ROOT / "configs" / "data"

Format = Literal["auto", "pairs", "sts", "classification", "clustering", "pair_classification", "nli", "reranking",
                 "flagembedding", "sentence_transformers", "tevatron", "beir", "examples"]

# Per format: the fields it reads -> the dataset columns tried by default (the first that exists).
# ``fields:`` in a dataset entry maps a field to another column. The formats' docs: kalm/ingest/formats/.
FORMAT_FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    "pairs": {"query": ("query",), "positive": ("positive",), "negatives": ("negatives",)},
    "sts": {"sentence1": ("sentence1",), "sentence2": ("sentence2",), "score": ("score",)},
    "classification": {"text": ("text",), "label": ("label",)},
    "clustering": {"text": ("sentences", "sentence", "text"), "label": ("labels", "label")},
    "pair_classification": {"sentence1": ("sentence1",), "sentence2": ("sentence2",), "label": ("label", "labels")},
    "nli": {"premise": ("premise", "sentence1"), "hypothesis": ("hypothesis", "sentence2"), "label": ("label",)},
    "reranking": {"query": ("query",), "positive": ("positive",), "negative": ("negative",)},
    "flagembedding": {"query": ("query",), "pos": ("pos",), "neg": ("neg",), "prompt": ("prompt",),
                      "type": ("type",)},
    # sentence-transformers reads columns by position (anchor, positive, negatives...), not by name.
    "sentence_transformers": {"anchor": (), "positive": (), "negatives": ()},
    "tevatron": {"query": ("query",), "positive_passages": ("positive_passages",),
                 "negative_passages": ("negative_passages",)},
    "beir": {},
    "examples": {},
}


class DatasetSource(Strict):
    """One dataset: a local file or folder (``path``), a hub dataset (``hf_name``), or both (the local
    copy is used when it exists, the hub dataset otherwise).

    ``format`` says how rows become examples (one mapper each, documented in kalm/ingest/formats/):
    ``pairs``, ``sts``, ``classification``, ``clustering``, ``pair_classification``, ``nli``,
    ``reranking``, ``flagembedding``, ``sentence_transformers``, ``tevatron``, ``beir`` (a folder or
    hub dataset with corpus, queries and qrels), ``examples`` (rows already in kalm's schema), or
    ``auto`` (chosen from the columns when that is unambiguous; the choice is logged and in stats.json).
    """

    name: str = Field(..., description="short name recorded as the examples' source")
    path: Optional[Path] = None
    hf_name: Optional[str] = Field(None, description="hub dataset name (or a local folder datasets can load)")
    hf_config: Optional[str] = None
    split: str = "train"
    revision: Optional[str] = Field(None, description="hub revision (commit) to pin; part of the cache key")
    streaming: bool = Field(True, description="stream hub datasets instead of downloading them whole")
    format: Format = "auto"
    task_type: Optional[TaskType] = None
    instruction: str = ""
    language: str = Field("en", description="ISO code of the texts, or 'auto' to detect per example")
    fields: dict[str, str] = Field(default_factory=dict, description="format field -> dataset column")
    min_score: float = Field(4.0, description="sts format: minimum score of a positive pair")
    max_rows: Optional[int] = Field(None, ge=1, description="keep at most this many examples (seeded uniform sample)")
    in_domain: bool = Field(False, description="drawn from an evaluation task's train split (marked in reports)")
    required: bool = Field(True, description="false: a local split that does not exist is skipped and reported, "
                                             "not an error (e.g. a task folder that has only a test split)")
    seed: int = 0
    swap_positives: float = Field(
        0.0, ge=0, lt=1, description="EXPERIMENTS ONLY: this share of the dataset's examples gets another "
                                     "example's positive (seeded), the way web-mined pairs are wrong; marked "
                                     "metadata planted='swapped_positive' so the filter's precision and recall "
                                     "on them can be measured (configs/cpu-levers.yaml). Never for real training")

    @model_validator(mode="after")
    def _check(self) -> "DatasetSource":
        if self.path is None and self.hf_name is None:
            raise ValueError(f"dataset {self.name!r}: give 'path' (local file or folder) or 'hf_name' (hub dataset)")
        known = FORMAT_FIELDS.get(self.format)
        if known is not None and self.format != "auto":
            unknown = sorted(set(self.fields) - set(known))
            if unknown:
                fix = (f"map only fields whose column has another name (fields: {{{sorted(known)[0]}: <column>}}); "
                       f"a column named like its field needs no mapping" if known else "drop the fields: mapping")
                raise ValueError(f"dataset {self.name!r}: format {self.format!r} has no field(s) {unknown}; "
                                 f"its fields are {sorted(known) or 'fixed (no fields: mapping)'}. Fix: {fix}")
        return self

    def source_label(self) -> str:
        """Where the rows come from, for messages."""
        if self.path is not None and Path(self.path).exists():
            return str(self.path)
        return f"hub:{self.hf_name}" + (f"[{self.hf_config}]" if self.hf_config else "") + f"/{self.split}"


class EvalTextSource(Strict):
    """An evaluation task folder (../shared/data layouts) whose test texts training data must not contain."""

    name: str
    path: Path


class DecontaminationConfig(Strict):
    """Remove training examples whose query or positive is a text of an evaluation task's test split:
    equal after :func:`kalm.text.normalize` (case, whitespace, punctuation), or a near-duplicate
    (MinHash Jaccard >= ``threshold`` on :func:`kalm.text.shingles`)."""

    enabled: bool = True
    tasks: list[EvalTextSource] = Field(
        default_factory=list,
        description="task folders to check against; the run config fills in evaluate.tasks' local folders")
    from_evaluate: bool = Field(True, description="add the run's evaluate.tasks that have a local folder")
    unchecked: list[str] = Field(
        default_factory=list,
        description="evaluation tasks/benchmarks of the run without a local folder: not checked (filled by the run config)")
    threshold: float = Field(0.8, gt=0, le=1, description="MinHash Jaccard of a near-duplicate")
    num_perm: int = Field(64, ge=8, le=512)


class DedupConfig(Strict):
    """Exact (after :func:`kalm.text.fold`) and near-duplicate (MinHash LSH) removal of examples,
    compared on query + positive, across all datasets of the stage; the first occurrence is kept."""

    enabled: bool = True
    threshold: float = Field(0.8, gt=0, le=1, description="MinHash Jaccard above which two examples are duplicates")
    num_perm: int = Field(64, ge=8, le=512)


class IngestConfig(Strict):
    """The ingest stage. ``mixture: NAME`` includes the datasets of ``configs/data/NAME.yaml`` (or a YAML
    path); a dataset listed here with the same name as a mixture entry replaces that entry."""

    mixture: Optional[str] = None
    datasets: list[DatasetSource] = Field(default_factory=list)
    rows_per_shard: int = Field(100_000, ge=1, description="rows per output Parquet shard")
    batch_size: int = Field(8_192, ge=1, description="rows read and mapped at a time")
    pair_pool_per_label: int = Field(
        10_000, ge=2,
        description="classification/clustering: same-label partners are drawn from a seeded uniform sample "
                    "of at most this many texts per label (bounded memory; all texts when fewer)")
    decontamination: DecontaminationConfig = DecontaminationConfig()
    dedup: DedupConfig = DedupConfig()

    @model_validator(mode="before")
    @classmethod
    def _include_mixture(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data.get("mixture"):
            return data
        preset = load_mixture(str(data["mixture"]))
        own = list(data.get("datasets") or [])
        names = {d.get("name") if isinstance(d, dict) else getattr(d, "name", None) for d in own}
        return {**data, "datasets": [d for d in preset if d.get("name") not in names] + own}

    @field_validator("datasets")
    @classmethod
    def _unique_names(cls, v: list[DatasetSource]) -> list[DatasetSource]:
        names = [d.name for d in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"dataset names {dup} appear more than once: names label shards and stats, keep them unique")
        return v


def mixture_path(name: str) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml"):
        return p
    return MIXTURES_DIR / f"{name}.yaml"


def load_mixture(name: str) -> list[dict[str, Any]]:
    """The dataset entries of a data preset (``configs/data/<name>.yaml`` or a YAML path)."""
    path = mixture_path(name)
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in MIXTURES_DIR.glob("*.yaml"))) or "none"
        raise ValueError(f"ingest.mixture {name!r}: no file {path}; presets in {MIXTURES_DIR}: {known}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict) or not isinstance(raw.get("datasets"), list):
        raise ValueError(f"ingest.mixture {name!r}: {path} must hold 'datasets:' (a list of dataset entries)")
    extra = sorted(set(raw) - {"datasets", "description", "sources"})
    if extra:
        raise ValueError(f"ingest.mixture {name!r}: {path} has unknown top-level keys {extra}")
    return [dict(d) for d in raw["datasets"]]
