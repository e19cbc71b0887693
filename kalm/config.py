"""The run config: one pydantic model per stage, composed, loaded from YAML presets.

A bad config fails here, before any work, with a message naming the field and the fix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import Field, ValidationError

from kalm.ablation.config import AblationConfig
from kalm.configbase import Strict
from kalm.evaluation.config import EvaluateConfig
from kalm.filtering.config import FilterConfig
from kalm.ingest.config import IngestConfig
from kalm.store import hash_strings
from kalm.synth.config import GenerateConfig
from kalm.training.config import TrainConfig

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PRESETS_DIR = PROJECT_ROOT / "configs"
DEFAULT_PRESET = "cpu-demo"


class ConfigError(ValueError):
    """A config that cannot run; the message names the field and the fix."""


class RunConfig(Strict):
    name: str = "kalm"
    description: str = ""
    runs_dir: Path = Path("runs")
    data_dir: Optional[Path] = Field(
        None,
        description="folder of local MTEB task data (default: $KALM_DATA_DIR, else ../shared/data beside the project)",
    )
    generate: GenerateConfig = GenerateConfig()
    ingest: IngestConfig = IngestConfig()
    filter: FilterConfig = FilterConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    ablation: AblationConfig = AblationConfig()

    def resolved_data_dir(self) -> Optional[Path]:
        """The local task data folder, or None where it does not exist (then named mteb tasks are used)."""
        candidates = [self.data_dir] if self.data_dir else []
        if os.environ.get("KALM_DATA_DIR"):
            candidates.insert(0, Path(os.environ["KALM_DATA_DIR"]))
        candidates.append(PROJECT_ROOT.parent / "shared" / "data")
        for c in candidates:
            if c is not None and Path(c).is_dir():
                return Path(c).resolve()
        return None

    def stage_hash(self, stage: str) -> str:
        section = getattr(self, stage)
        return hash_strings([stage, section.model_dump_json()])


def _source(path: Path | str, overrides: Optional[dict[str, Any]]) -> str:
    """The config file and the command-line overrides applied to it, as an error names them."""
    sets = " ".join(f"--set {k}={_shown(v)}" for k, v in (overrides or {}).items())
    return f"{path} with {sets}" if sets else str(path)


def _shown(value: Any) -> str:
    """An override's value as it is typed: YAML flow style for lists and mappings (``[a, b]``)."""
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _marked(line: str, loc: str, overrides: Optional[dict[str, Any]]) -> str:
    """``line`` (an error about setting ``loc``) marked with the ``--set`` overrides behind it: the setting
    itself or the section holding it ("from"), or, for a check across a section's settings, the overrides
    inside that section that the message names (listed, not blamed: our checks name the settings they
    read, so an override the message does not name, e.g. a seed beside a token budget, is left out)."""
    sets = {k: f"{k}={_shown(v)}" for k, v in (overrides or {}).items()}
    behind = [s for k, s in sets.items() if k == loc or loc.startswith(k + ".")]
    inside = [s for k, s in sets.items() if k.startswith(loc + ".") and k.rsplit(".", 1)[-1] in line]
    return (line + (f" [from --set {', --set '.join(behind)}]" if behind else "")
            + (f" [set in this section: --set {', --set '.join(inside)}]" if inside else ""))


def _format_errors(err: ValidationError, source: str, overrides: Optional[dict[str, Any]] = None) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        kind = e["type"]
        if kind == "extra_forbidden":
            fix = "unknown key: remove it or fix its spelling"
        elif kind == "missing":
            fix = "required: add it"
        else:  # our validators' messages name the setting and the fix; pydantic prefixes them with "Value error, "
            fix = e["msg"].removeprefix("Value error, ")
        # The value is worth echoing when it is one setting's; a whole section (a check across its
        # settings) would be a long, cut-off dump.
        shown = kind != "missing" and not isinstance(e.get("input"), (dict, list))
        line = f"  - {loc}: {fix} (got {e.get('input')!r:.80})" if shown else f"  - {loc}: {fix}"
        lines.append(_marked(line, loc, overrides))
    return "\n".join(lines)


def preset_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    candidate = PRESETS_DIR / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    known = ", ".join(sorted(x.stem for x in PRESETS_DIR.glob("*.yaml")))
    raise ConfigError(f"config {name_or_path!r} is neither a YAML file nor a preset; presets: {known}")


def load_config(name_or_path: str | Path = DEFAULT_PRESET, overrides: Optional[dict[str, Any]] = None,
                check_paths: bool = True) -> RunConfig:
    """Load a preset name or YAML file, apply dotted ``overrides``, validate everything."""
    path = preset_path(name_or_path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist: check the path or use a preset name")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections (generate, ingest, ...), not {type(raw).__name__}")
    for key, value in (overrides or {}).items():
        _set_dotted(raw, key, value)
    try:
        cfg = RunConfig.model_validate(raw)
        # "{data_dir}" in any string stands for the local task data folder (a setting, not a fixed path).
        data_dir = cfg.resolved_data_dir()
        cfg = RunConfig.model_validate(_substitute(raw, "{data_dir}", str(data_dir or "<no data_dir>")))
        cfg = _decontaminate_against_evaluation(cfg, data_dir)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, _source(path, overrides), overrides)) from None
    if check_paths:
        check_config_paths(cfg, source=_source(path, overrides), overrides=overrides)
    return cfg


def _decontaminate_against_evaluation(cfg: RunConfig, data_dir: Optional[Path]) -> RunConfig:
    """Ingest's decontamination checks the local folders of the run's evaluation tasks (unless turned off)."""
    from kalm.ingest.decontaminate import tasks_from_evaluate

    dc = cfg.ingest.decontamination
    if not (dc.enabled and dc.from_evaluate):
        return cfg
    have = {t.name for t in dc.tasks}
    local, unchecked = tasks_from_evaluate(cfg.evaluate.tasks, data_dir)
    tasks = dc.tasks + [t for t in local if t.name not in have]
    unchecked = sorted(set(dc.unchecked) | set(unchecked) | set(cfg.evaluate.benchmarks))
    return cfg.model_copy(update={"ingest": cfg.ingest.model_copy(update={
        "decontamination": dc.model_copy(update={"tasks": tasks, "unchecked": unchecked})})})


def _substitute(node: Any, placeholder: str, value: str) -> Any:
    if isinstance(node, str):
        return node.replace(placeholder, value)
    if isinstance(node, list):
        return [_substitute(x, placeholder, value) for x in node]
    if isinstance(node, dict):
        return {k: _substitute(v, placeholder, value) for k, v in node.items()}
    return node


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {p!r} is not a section")
    node[parts[-1]] = value


def check_config_paths(cfg: RunConfig, source: str = "config", overrides: Optional[dict[str, Any]] = None) -> None:
    """Fail early on missing files and unresolvable local model references (a problem set by a ``--set``
    override is marked with it)."""
    from kalm.models import ModelRefError, resolve_model

    problems: list[tuple[str, str]] = []  # (setting, what is wrong and the fix)
    refs = {"train.student": cfg.train.student, "filter.teacher": cfg.filter.teacher}
    if cfg.generate.enabled:
        refs["generate.model"] = cfg.generate.model
    for i, b in enumerate(cfg.evaluate.baselines):
        refs[f"evaluate.baselines.{i}"] = b
    for field, ref in refs.items():
        try:
            resolve_model(ref)
        except ModelRefError as e:
            problems.append((field, str(e)))
    for i, ds in enumerate(cfg.ingest.datasets):
        if ds.path is not None and not ds.path.exists() and ds.hf_name is None:
            problems.append((f"ingest.datasets.{i}.path",
                             f"{ds.path} does not exist; fix the path or remove dataset {ds.name!r}"))
    p = cfg.generate.personas
    for field, value in (("path", p.path), ("seed_corpus", p.seed_corpus)):
        if cfg.generate.enabled and value is not None and not Path(value).exists():
            problems.append((f"generate.personas.{field}", f"{value} does not exist; fix the path or remove the key"))
    if cfg.train.matryoshka_dims or cfg.evaluate.matryoshka_dim:
        from kalm.training.config import matryoshka_problems, student_embedding_size

        size = student_embedding_size(cfg.train.student)  # None for a hub student not available here
        if size is not None:
            # Each message starts with the setting it is about ("train.matryoshka_dims [...]: ...").
            problems += [(m.split(" ", 1)[0], m) for m in matryoshka_problems(
                cfg.train.matryoshka_dims, cfg.evaluate.matryoshka_dim, size, cfg.train.student)]
    if cfg.generate.prompts_dir is not None and not cfg.generate.prompts_dir.is_dir():
        problems.append(("generate.prompts_dir", f"{cfg.generate.prompts_dir} is not a folder"))
    if problems:
        lines = [_marked(f"  - {m}" if m.startswith(loc + " ") else f"  - {loc}: {m}", loc, overrides)
                 for loc, m in problems]
        raise ConfigError(f"invalid config {source}:\n" + "\n".join(lines))
