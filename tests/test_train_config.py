"""Train settings refused before any work: precision that loses updates, Matryoshka sizes above the
student's (case 15); which config a rerun uses (the run's recorded one)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from kalm.schema import Example, write_examples
from kalm.training.config import TrainConfig
from train_twins import tiny_qwen2

PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def twin(tmp_path_factory) -> str:
    return str(tiny_qwen2(tmp_path_factory.getbasetemp() / "qwen2-tiny"))


def test_pure_bf16_full_fine_tuning_is_refused_naming_the_fix():
    with pytest.raises(ValidationError, match=r"param_dtype: float32 with\s+dtype: bfloat16.*lora.enabled: true"):
        TrainConfig(param_dtype="bfloat16")
    with pytest.raises(ValidationError, match="use dtype: bfloat16"):
        TrainConfig(dtype="float16")
    TrainConfig(param_dtype="bfloat16", lora={"enabled": True}, dtype="bfloat16")  # LoRA may keep a bf16 base


def _pairs(path: Path, n: int = 16) -> Path:
    write_examples([Example(task_type="retrieval", query=f"question number {i}", positive=f"answer text {i}",
                            source="t", instruction="Given a question, retrieve the answer") for i in range(n)], path)
    return path


def test_lora_keeps_a_bf16_base_frozen_and_trains_fp32_adapters(twin, tmp_path):
    from kalm.training.data import prepare_training_data
    from kalm.training.model import Embedder
    from kalm.training.trainer import run_training

    cfg = TrainConfig(student=twin, param_dtype="bfloat16", dtype="bfloat16", lora={"enabled": True, "r": 4},
                      max_length=16, batch_size=4, max_steps=2, checkpoint_every=2, learning_rate=1e-3)
    emb = Embedder(twin, cfg, torch.device("cpu"))
    dtypes = {n: p.dtype for n, p in emb.named_parameters()}
    assert all(d == torch.float32 for n, d in dtypes.items() if "lora_" in n)
    assert all(d == torch.bfloat16 for n, d in dtypes.items() if "lora_" not in n)
    data = prepare_training_data(cfg, [_pairs(tmp_path / "p.parquet")], tmp_path / "tokens", model_path=twin)
    summary = run_training(cfg, twin, data, tmp_path / "out")
    assert summary["steps_trained"] == 2 and all(torch.isfinite(torch.tensor(summary["losses"])))
    from transformers import AutoModel

    merged = AutoModel.from_pretrained(str(tmp_path / "out" / "model"))
    base = AutoModel.from_pretrained(twin)
    q = "layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged.state_dict()[q].float(), base.state_dict()[q].float())  # adapters merged in


CASE15 = "15-matryoshka-dims-too-large"


def test_case15_check_config_names_the_dims_and_the_students_size(shared_data, monkeypatch, capsys):
    from kalm.cli import main

    monkeypatch.chdir(PROJECT)  # the case's paths are relative to the project
    config = shared_data.parent / "cases" / CASE15 / "config.yaml"
    assert main(["check-config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "train.matryoshka_dims [896, 512, 128]: [896, 512] exceed the embedding size 384" in err, err
    assert "evaluate.matryoshka_dim 512 exceeds the embedding size 384" in err, err
    # `kalm run` stops at the same check, before Prefect starts or any stage runs.
    assert main(["run", "--config", str(config), "--run-id", "case15"]) == 2
    assert "train.matryoshka_dims" in capsys.readouterr().err
    assert not (PROJECT / "runs" / "case15").exists()


def test_train_stage_refuses_too_large_dims_before_step_one(twin, tmp_path):
    """The stage checks before tokenizing; the trainer checks again after loading the model (a hub
    student whose size check-config could not read)."""
    from kalm.training import train
    from kalm.training.data import prepare_training_data
    from kalm.training.trainer import run_training

    cfg = TrainConfig(student=twin, matryoshka_dims=[128, 64, 32], max_length=16, batch_size=4, max_steps=2)
    inputs = _pairs(tmp_path / "p.parquet")
    with pytest.raises(ValueError, match=r"train.matryoshka_dims \[128, 64, 32\]: \[128\] exceeds the embedding "
                                         r"size 64"):
        train(cfg, [inputs], tmp_path / "stage")
    assert not (tmp_path / "stage" / "tokens").exists()
    data = prepare_training_data(cfg.model_copy(update={"matryoshka_dims": []}), [inputs], tmp_path / "tokens",
                                 model_path=twin)
    with pytest.raises(ValueError, match="exceeds the embedding size 64"):
        run_training(cfg, twin, data, tmp_path / "direct")
    assert not list((tmp_path / "direct").rglob("metrics.csv"))


def test_rerun_uses_the_recorded_config_and_names_differences(tmp_path):
    from kalm.config import ConfigError, load_config
    from kalm.rerun import config_differences, run_config

    runs = tmp_path / "runs"
    recorded = load_config("cpu-demo", {"runs_dir": str(runs), "train.max_steps": 7})
    (runs / "r1").mkdir(parents=True)
    (runs / "r1" / "manifest.json").write_text(json.dumps({"config": recorded.model_dump(mode="json"),
                                                           "config_source": "cpu-demo"}))
    # No --config: the run's own config, --set on top.
    cfg, source, record = run_config(None, "r1", {"runs_dir": str(runs), "train.learning_rate": 1e-4})
    assert cfg.train.max_steps == 7 and cfg.train.learning_rate == 1e-4 and source == "cpu-demo"
    assert record == {"rerun_overrides": {"runs_dir": str(runs), "train.learning_rate": 1e-4}}
    # An explicit --config must match (keys changed with --set excepted) or the error lists what differs.
    with pytest.raises(ConfigError, match=r"train.max_steps: 40 in cpu-demo, 7 in run 'r1'"):
        run_config("cpu-demo", "r1", {"runs_dir": str(runs)})
    cfg, _, _ = run_config("cpu-demo", "r1", {"runs_dir": str(runs), "train.max_steps": 9})
    assert cfg.train.max_steps == 9
    # --set values written with "{data_dir}" (as `kalm ablate` sets each seed's ingest.datasets from the
    # YAML) resolve on a rerun as they do for a new run.
    import yaml

    from kalm.config import preset_path

    raw = yaml.safe_load(preset_path("cpu-demo").read_text())["ingest"]["datasets"]
    assert raw[0]["path"].startswith("{data_dir}")
    cfg, _, _ = run_config("cpu-demo", "r1", {"runs_dir": str(runs), "train.max_steps": 9, "ingest.datasets": raw})
    assert cfg.ingest.datasets[0].path == recorded.ingest.datasets[0].path
    # A new run id: the given config (default cpu-demo).
    cfg, source, record = run_config(None, "new", {"runs_dir": str(runs)})
    assert source == "cpu-demo" and record == {} and cfg.train.max_steps == 40
    assert config_differences({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}}) == [("a.c", 2, 3)]
    assert config_differences({"a": {"b": 1, "c": 2}}, {"a": {"b": 5, "c": 3}}, ignore={"a"}) == []
