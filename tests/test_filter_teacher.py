"""Teachers: the static (model2vec) teacher distilled offline, and one process pool per stage."""

from __future__ import annotations

import json
import os

import numpy as np
import psutil
import pytest

from kalm.filtering.config import FilterConfig
from kalm.filtering.embed import TeacherEncoder, teacher_dtype


@pytest.fixture(scope="module")
def sts_texts(shared_data) -> list[str]:
    lines = (shared_data / "stsb_en" / "train.jsonl").read_text().splitlines()[:200]
    return list(dict.fromkeys(t for r in map(json.loads, lines) for t in (r["sentence1"], r["sentence2"])))


def test_static_teacher_is_distilled_once_offline_and_cached(sts_texts, tmp_path, tiny_bert_teacher, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = TeacherEncoder(tiny_bert_teacher, tmp_path, kind="static", static_dims=16, max_seq_length=64)
    assert enc.runtime == "static" and enc.devices is None
    vecs = enc.encode(sts_texts)
    assert vecs.shape == (len(sts_texts), 16) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-3)  # float16 store
    assert (enc.static_dir / "config.json").exists() and enc.misses == len(sts_texts)
    # Same text, same vector whatever it is batched with; a text is the mean of its tokens' vectors,
    # so a different text gets a different vector.
    np.testing.assert_allclose(enc.encode([sts_texts[5]])[0], vecs[5], atol=1e-3)
    assert float(vecs[0] @ vecs[1]) < 0.9999

    # Under the CLI's TOKENIZERS_PARALLELISM=false, model2vec tokenizes with the tokenizers' thread
    # pool on (tokenizing is most of a static teacher's time), and the CLI's setting is back after.
    class Recording(list):  # model2vec reads its input inside encode
        seen: list = []

        def __iter__(self):
            Recording.seen.append(os.environ.get("TOKENIZERS_PARALLELISM"))
            return list.__iter__(self)

    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    again_vecs = enc._encode_chunk(Recording(sts_texts))
    assert Recording.seen and set(Recording.seen) == {"true"}
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    np.testing.assert_allclose(again_vecs, vecs, atol=1e-3)  # the same vectors (the store keeps float16)

    again = TeacherEncoder(tiny_bert_teacher, tmp_path, kind="static", static_dims=16, max_seq_length=64)
    mtime = (again.static_dir / "model.safetensors").stat().st_mtime_ns
    np.testing.assert_array_equal(again.encode(sts_texts), vecs)
    assert again.misses == 0 and again._model is None  # served by the store: no model loaded
    assert (again.static_dir / "model.safetensors").stat().st_mtime_ns == mtime
    fresh = TeacherEncoder(tiny_bert_teacher, tmp_path / "other-cache", kind="static", static_dims=16,
                           max_seq_length=64)
    fresh.static_dir = again.static_dir  # the distilled model, reloaded: same vectors
    np.testing.assert_allclose(fresh.encode(sts_texts[:20]), vecs[:20], atol=1e-3)


@pytest.mark.slow
def test_one_process_pool_serves_every_chunk_and_is_stopped(sts_texts, tmp_path, minilm_ref):
    """Several devices encode through ONE sentence-transformers pool for the encoder's (the stage's)
    life; here two CPU workers stand in for two GPUs (the same start_multi_process_pool/pool= path)."""
    single = TeacherEncoder(minilm_ref, tmp_path / "one", runtime="torch", batch_size=16).encode(sts_texts)
    with TeacherEncoder(minilm_ref, tmp_path / "pool", batch_size=16, devices=["cpu", "cpu"]) as enc:
        assert enc.runtime == "torch" and enc.chunk == 16 * 32 * 2
        parts = [enc.encode(sts_texts[a:a + 100]) for a in range(0, len(sts_texts), 100)]
        assert len(parts) >= 3 and enc.pools_started == 1
        pids = [p.pid for p in enc._pool["processes"]]
        assert all(psutil.pid_exists(pid) for pid in pids)
    assert enc._pool is None and not any(psutil.pid_exists(pid) for pid in pids)
    pooled = np.concatenate(parts)
    assert float((pooled * single).sum(1).min()) > 0.999


def test_the_teacher_runs_in_bf16_on_gpus_and_fp32_elsewhere():
    assert teacher_dtype("auto", "torch", on_gpu=True) == "bfloat16"
    assert teacher_dtype("auto", "torch", on_gpu=False) == "float32"
    assert teacher_dtype("auto", "openvino", on_gpu=False) == "float32"
    assert teacher_dtype("float32", "torch", on_gpu=True) == "float32"
    with pytest.raises(ValueError, match="filter.runtime: torch"):
        teacher_dtype("bfloat16", "openvino", on_gpu=False)
    with pytest.raises(ValueError, match="filter.dtype"):
        FilterConfig(dtype="bfloat16", runtime="openvino")


@pytest.mark.slow
def test_bf16_teacher_cpu_twin_in_process_and_through_a_pool(sts_texts, tmp_path, minilm_ref):
    """kalm-mini's teacher on GPUs (``dtype: auto`` = bf16, one GPU in process, several through one
    pool), run on CPU: the same load and encode paths with ``dtype: bfloat16``. Its vectors are the
    fp32 ones within bf16 rounding, and are stored apart from them."""
    import torch

    fp32 = TeacherEncoder(minilm_ref, tmp_path, runtime="torch", batch_size=16)
    bf16 = TeacherEncoder(minilm_ref, tmp_path, batch_size=16, dtype="bfloat16")
    assert (fp32.dtype, bf16.dtype, bf16.runtime) == ("float32", "bfloat16", "torch")
    assert bf16.store.folder != fp32.store.folder and bf16.store.folder.name.endswith("-bf16-float16")
    texts = sts_texts[:160]
    ref, half = fp32.encode(texts), bf16.encode(texts)
    assert next(bf16._model.parameters()).dtype == torch.bfloat16
    cos = (ref * half).sum(1)
    assert cos.min() > 0.99 and np.abs(ref - half).max() > 1e-3  # close, and really computed in bf16
    assert bf16.misses == len(texts) and fp32.misses == len(texts)
    with TeacherEncoder(minilm_ref, tmp_path / "pool", batch_size=16, devices=["cpu", "cpu"],
                        dtype="bfloat16") as pooled:
        assert pooled.dtype == "bfloat16" and pooled.runtime == "torch"
        got = pooled.encode(texts)
        assert pooled.pools_started == 1
    assert float((got * half).sum(1).min()) > 0.999
