"""Model references resolve to the packaged models, paths and hub ids, with clear errors."""

import pytest

from kalm.models import ModelRefError, model_fingerprint, resolve_model


def test_packaged_models_resolve(minilm_ref, smollm_ref):
    minilm = resolve_model(minilm_ref)
    assert minilm.is_local and minilm.gguf_file is None and minilm.path.endswith("model")
    smol = resolve_model(smollm_ref)
    assert smol.gguf_file and smol.gguf_file.endswith(".gguf")


def test_hub_ids_pass_through():
    m = resolve_model("Qwen/Qwen2-0.5B")
    assert m.kind == "hub" and m.path == "Qwen/Qwen2-0.5B"


def test_errors_say_how_to_fix(tmp_path):
    with pytest.raises(ModelRefError, match="not installed; install it"):
        resolve_model("pkg:no_such_model_pkg")
    with pytest.raises(ModelRefError, match="does not exist"):
        resolve_model(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelRefError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))


def test_fingerprint_is_stable(minilm_ref):
    assert model_fingerprint(minilm_ref) == model_fingerprint(minilm_ref)
    assert model_fingerprint("org/a") != model_fingerprint("org/b")
