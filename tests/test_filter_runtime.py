"""The filter teacher's OpenVINO runtime (the CPU default) against sentence-transformers on torch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kalm.filtering import openvino_forward
from kalm.filtering.embed import TeacherEncoder


@pytest.fixture(scope="module")
def sts_texts(shared_data) -> list[str]:
    lines = (shared_data / "stsb_en" / "train.jsonl").read_text().splitlines()[:120]
    texts = list(dict.fromkeys(t for r in map(json.loads, lines) for t in (r["sentence1"], r["sentence2"])))
    return texts + [" ".join(texts[:60])]  # one text past max_seq_length: both runtimes truncate it


def test_openvino_embeddings_equal_torch_and_the_conversion_is_reused(sts_texts, tmp_path, minilm_ref):
    assert TeacherEncoder(minilm_ref, tmp_path / "auto").runtime == ("torch" if torch.cuda.is_available() else "openvino")
    # float32 stores: this compares the runtimes, not the float16 embedding store (tested on its own).
    reference = TeacherEncoder(minilm_ref, tmp_path / "torch", batch_size=7, runtime="torch",
                               store_dtype="float32").encode(sts_texts)
    ov = TeacherEncoder(minilm_ref, tmp_path / "ov", batch_size=7, runtime="openvino", store_dtype="float32")
    vecs = ov.encode(sts_texts)
    assert ov.runtime == "openvino" and ov._openvino.converted
    assert vecs.shape == reference.shape
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert float((vecs * reference).sum(1).min()) > 0.9999

    # A second encoder (another run) loads the saved conversion; other batch sizes, same vectors.
    again = TeacherEncoder(minilm_ref, tmp_path / "ov", batch_size=64, runtime="openvino", store_dtype="float32")
    again.load()
    assert not again._openvino.converted
    raw = again._openvino.encode(sts_texts, batch_size=64)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), vecs, atol=1e-5)


def test_openvino_runtime_without_the_package_says_how_to_fix_it(tmp_path, minilm_ref, monkeypatch):
    monkeypatch.setattr(openvino_forward, "available", lambda: False)
    with pytest.raises(RuntimeError, match="filter.runtime is 'openvino'.*pip install openvino"):
        TeacherEncoder(minilm_ref, tmp_path, runtime="openvino")
    assert TeacherEncoder(minilm_ref, tmp_path, runtime="auto").runtime == "torch"
