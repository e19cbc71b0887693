"""Ingest config: data presets (mixtures) validated offline, entries overridden by name."""

import json

import pytest
import yaml

from kalm.config import ConfigError, load_config
from kalm.ingest.config import IngestConfig, load_mixture


def test_kalm_finetune_preset_validates_offline_and_kalm_mini_uses_it():
    entries = load_mixture("kalm-finetune")
    cfg = load_config("kalm-mini", check_paths=False)
    names = [d.name for d in cfg.ingest.datasets]
    assert names == [e["name"] for e in entries] and len(names) >= 30
    for d in cfg.ingest.datasets:
        assert d.hf_name and d.format != "auto" and d.task_type and d.language and d.max_rows and d.instruction
    by = {d.name: d for d in cfg.ingest.datasets}
    assert by["banking77"].instruction == "Given an online banking query, find the corresponding intents"
    assert by["msmarco"].format == "beir" and by["msmarco"].revision
    # the expanded config validates again to the same thing (no double inclusion)
    again = IngestConfig.model_validate(json.loads(cfg.ingest.model_dump_json()))
    assert [d.name for d in again.datasets] == names


def test_a_dataset_named_like_a_mixture_entry_replaces_it(tmp_path):
    cfg = IngestConfig.model_validate({"mixture": "kalm-finetune",
                                       "datasets": [{"name": "banking77", "path": str(tmp_path / "b.jsonl"),
                                                     "format": "classification", "max_rows": 10}]})
    b = [d for d in cfg.datasets if d.name == "banking77"]
    assert len(b) == 1 and b[0].max_rows == 10 and b[0].hf_name is None


def test_bad_mixture_and_unknown_fields_fail_at_config_time(tmp_path):
    bad = tmp_path / "mix.yaml"
    bad.write_text(yaml.safe_dump({"datasets": [{"name": "x", "hf_name": "a/b", "format": "pairs",
                                                 "fields": {"pos": "p"}}]}))
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"ingest": {"mixture": str(bad)}, "generate": {"enabled": False}}))
    with pytest.raises(ConfigError, match=r"format 'pairs' has no field\(s\) \['pos'\]"):
        load_config(run, check_paths=False)
    with pytest.raises(ValueError, match=r"ingest.mixture 'nope'.*presets in .*kalm-finetune"):
        IngestConfig(mixture="nope")
