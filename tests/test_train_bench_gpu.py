"""bench/train_gpu.py's CPU-runnable parts: the Qwen2-0.5B config, the word tokenizer and the
fixed-length texts (every batch holds the same tokens for both trainers), both trainers' code on a
shrunk student, and the refusal without a GPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "bench" / "train_gpu.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_train_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_qwen2_05b_sizes_and_flops(bench):
    from transformers import Qwen2Config

    config = Qwen2Config(**bench.QWEN2_05B)
    # Qwen2-0.5B: ~494 M parameters, of which 136 M embeddings (tied).
    with torch.device("meta"):
        from transformers import Qwen2Model

        n = sum(p.numel() for p in Qwen2Model(config).parameters())
    assert 490e6 < n < 500e6
    non_embedding = n - config.vocab_size * config.hidden_size
    per_token = bench.model_flops_per_token(config, 512)
    assert per_token == pytest.approx(6 * (non_embedding - (2 * 24 + 1) * 896 - 24 * (896 + 2 * 128))
                                      + 12 * 24 * 896 * 512, rel=1e-6)  # norms and biases aside


@pytest.mark.slow
def test_both_trainers_run_the_same_fixed_length_batches_on_a_small_student(bench, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("the CPU twin of the benchmark; on a GPU run bench/train_gpu.py itself")
    from kalm.training.model import load_tokenizer

    student = bench.build_student(tmp_path / "student", vocab_size=0, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    data = bench.make_triplets(8, 12)
    tok = load_tokenizer(str(student), "mean")  # what both trainers load (a Qwen2Tokenizer)
    assert {len(tok(t)["input_ids"]) for triple in data for t in triple} == {12}  # one token per word, no specials
    ours = bench.run_ours(student, data, tmp_path / "ours", steps=2, batch=4, length=12, bf16=True)
    base = bench.run_baseline(student, data, tmp_path / "base", steps=2, batch=4, length=12, bf16=False)
    assert ours["tokens"] == base["tokens"] == 2 * 4 * 3 * 12  # the same tokens per step for both
    assert ours["seconds"] > ours["tokenize_seconds"] > 0 and base["seconds"] > 0


def test_refuses_without_a_gpu(bench):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        bench.main()
