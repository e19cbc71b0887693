"""GPU benchmark: our trainer vs sentence-transformers' trainer + MultipleNegativesRankingLoss on the
Qwen2-0.5B architecture, on one GPU, with nothing to download.

The student is Qwen2-0.5B's architecture with random weights: a ``Qwen2Config`` with the
published sizes (hidden 896, 24 layers, 14 heads, 2 KV heads, MLP 4864, vocabulary 151 936,
tied embeddings), saved once to a temporary folder with a word-level tokenizer built in process
(``tokenizers``, a byte-level BPE whose every 3-letter word is one token): texts are random
words, each exactly ``LENGTH`` tokens, so every batch of either trainer holds the same number of
tokens and no padding (same batches, same length).

Both trainers: bf16 mixed precision (fp32 master weights, bf16 autocast), SDPA attention, batch
``BATCH`` (query, positive, hard negative) triplets, ``STEPS`` steps, AdamW lr 1e-5 with 10 %
linear warmup, weight decay 0.01, gradient clipping at 1.0, mean pooling, in-batch + hard
negatives at temperature 0.05 (MNRL's scale 20), one process. Ours runs without GradCache and
without gradient checkpointing, as the baseline does.

Timing, the same for both: wall-clock seconds of the training loop (ours: tokenization into its
token file + its steps; the baseline: ``trainer.train()``, which tokenizes in its collator),
model loading and export excluded. Reported per trainer: non-padding tokens per second, MFU
(model FLOPs per token 6N + 12·layers·hidden·length, over the GPU's dense bf16 peak; set
``KALM_PEAK_TFLOPS`` for a GPU not in the table) and peak GPU memory
(``torch.cuda.max_memory_allocated``). The last line is JSON with ``ratio`` = ours / baseline
tokens per second. Takes ~2-4 minutes on one H200 (most of it building and saving the model).

    .venv/bin/python bench/train_gpu.py
"""

from __future__ import annotations

import gc
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BATCH, LENGTH, STEPS, LR, TEMP = 32, 512, 40, 1e-5, 0.05
WORD_LETTERS = 3  # the texts' words: 26^3 = 17 576 of them, one token each
PEAK_TFLOPS = {"H200": 989.5, "H100": 989.5, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0}

# Qwen/Qwen2-0.5B's config.json (published sizes).
QWEN2_05B = dict(vocab_size=151_936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32_768,
                 rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)


def word_tokenizer(letters: int = WORD_LETTERS):
    """A byte-level BPE tokenizer in which every " " + ``letters``-letter lowercase word is one token.

    Built in process (no download). It is a BPE with byte-level pre-tokenization, like Qwen2's
    own, because transformers loads any qwen2 model's tokenizer as ``Qwen2Tokenizer``; the merges
    grow each word from its letters, so a text of n such words is exactly n tokens."""
    import itertools
    import string

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_level = pre_tokenizers.ByteLevel.alphabet()
    vocab = {t: i for i, t in enumerate(["<unk>", "<pad>", "<eos>", *sorted(byte_level)])}
    merges = []
    for n in range(1, letters + 1):
        for word in itertools.product(string.ascii_lowercase, repeat=n):
            prefix, last = "\u0120" + "".join(word[:-1]), word[-1]
            vocab.setdefault(prefix + last, len(vocab))
            merges.append((prefix, last))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>",
                                   model_max_length=1_000_000)


def build_student(folder: Path, letters: int = WORD_LETTERS, **sizes: Any) -> Path:
    """Save a random-weight Qwen2 (Qwen2-0.5B's sizes unless ``sizes`` override them) and the word tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2Model

    tok = word_tokenizer(letters)
    sizes = {**QWEN2_05B, **sizes}
    config = Qwen2Config(**{**sizes, "vocab_size": max(len(tok), sizes["vocab_size"])},
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    Qwen2Model(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return Path(folder)


def make_triplets(n: int, length: int, letters: int = WORD_LETTERS, seed: int = 0) -> list[tuple[str, str, str]]:
    """``n`` (query, positive, negative) texts of exactly ``length`` words (= tokens) each, all distinct."""
    import string

    rng = random.Random(seed)

    def text() -> str:
        return "".join(" " + "".join(rng.choices(string.ascii_lowercase, k=letters)) for _ in range(length))

    return [(text(), text(), text()) for _ in range(n)]


def model_flops_per_token(config, length: int) -> float:
    """Training FLOPs per token: 6 x non-embedding parameters + attention's 12 x layers x hidden x length."""
    h, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    kv = h * config.num_key_value_heads // config.num_attention_heads
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * inter  # q, o, k, v projections and the gated MLP
    return 6 * layers * per_layer + 12 * layers * h * length


def run_ours(model_dir: Path, data: list[tuple[str, str, str]], work: Path, steps: int, batch: int, length: int,
             bf16: bool = True) -> dict[str, Any]:
    import csv

    from kalm.schema import Example, write_examples
    from kalm.training.config import TrainConfig
    from kalm.training.data import prepare_training_data
    from kalm.training.trainer import run_training

    path = work / "triplets.parquet"
    write_examples([Example(task_type="retrieval", query=q, positive=p, negatives=[n], source="bench")
                    for q, p, n in data], path)
    cfg = TrainConfig(student=str(model_dir), pooling="mean", use_instructions=False, max_length=length,
                      batch_size=batch, num_hard_negatives=1, max_steps=steps, learning_rate=LR, warmup_ratio=0.1,
                      weight_decay=0.01, max_grad_norm=1.0, temperature=TEMP, sampler="random",
                      dtype="bfloat16" if bf16 else "float32", attn_implementation="sdpa",
                      checkpoint_every=10 * steps, label_aware_negatives=False)
    t0 = time.perf_counter()
    tokens_file = prepare_training_data(cfg, [path], work / "ours" / "tokens", model_path=str(model_dir))
    tokenize_s = time.perf_counter() - t0
    run_training(cfg, str(model_dir), tokens_file, work / "ours")
    with open(work / "ours" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return {"seconds": tokenize_s + sum(float(r["seconds"]) for r in rows), "tokenize_seconds": tokenize_s,
            "tokens": sum(int(r["tokens"]) for r in rows), "final_loss": float(rows[-1]["loss"])}


def run_baseline(model_dir: Path, data: list[tuple[str, str, str]], work: Path, steps: int, batch: int,
                 length: int, bf16: bool = True) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    from sentence_transformers.sentence_transformer import modules as models
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    class CountingMNRL(MultipleNegativesRankingLoss):
        tokens = 0

        def forward(self, sentence_features, labels=None):
            self.tokens += sum(int(f["attention_mask"].sum()) for f in sentence_features)
            return super().forward(sentence_features, labels)

    cuda = torch.cuda.is_available()
    transformer = models.Transformer(str(model_dir), max_seq_length=length, module_output_name="token_embeddings",
                                     modality_config={"text": {"method": "forward",
                                                               "method_output_name": "last_hidden_state"}},
                                     model_args={"attn_implementation": "sdpa", "dtype": torch.float32})
    # Plain-text modality, as our export uses: no chat template around a decoder's input.
    model = SentenceTransformer(modules=[transformer, models.Pooling(transformer.get_embedding_dimension(), "mean"),
                                         models.Normalize()], device="cuda" if cuda else "cpu")
    ds = Dataset.from_dict({"anchor": [q for q, _, _ in data], "positive": [p for _, p, _ in data],
                            "negative": [n for _, _, n in data]})
    args = SentenceTransformerTrainingArguments(
        output_dir=str(work / "st"), per_device_train_batch_size=batch, max_steps=steps, learning_rate=LR,
        warmup_ratio=0.1, weight_decay=0.01, max_grad_norm=1.0, lr_scheduler_type="linear", bf16=bf16,
        save_strategy="no", report_to=[], logging_steps=steps, seed=0, use_cpu=not cuda, dataloader_num_workers=0,
        disable_tqdm=True)
    loss = CountingMNRL(model, scale=1 / TEMP)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds, loss=loss)
    t0 = time.perf_counter()
    out = trainer.train()
    return {"seconds": time.perf_counter() - t0, "tokens": loss.tokens, "final_loss": out.training_loss}


def peak_tflops(name: str) -> float:
    if os.environ.get("KALM_PEAK_TFLOPS"):
        return float(os.environ["KALM_PEAK_TFLOPS"])
    for key, value in PEAK_TFLOPS.items():
        if key in name:
            return value
    raise SystemExit(f"unknown GPU {name!r} for MFU: set KALM_PEAK_TFLOPS to its dense bf16 peak")


def main() -> None:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("bench/train_gpu.py needs a CUDA GPU (it measures bf16 training of a 0.5B model); "
                         "this machine has none. On CPU run bench/train.py.")
    from transformers import AutoConfig

    gpu = torch.cuda.get_device_name(0)
    peak = peak_tflops(gpu) * 1e12
    data = make_triplets(BATCH * STEPS, LENGTH)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as t:
        work = Path(t)
        model_dir = build_student(work / "qwen2-0.5b-random")
        config = AutoConfig.from_pretrained(model_dir)
        for name, fn in (("ours", run_ours), ("baseline", run_baseline)):
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            r = fn(model_dir, data, work, STEPS, BATCH, LENGTH)
            r["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            r["tokens_per_s"] = r["tokens"] / r["seconds"]
            r["mfu"] = r["tokens_per_s"] * model_flops_per_token(config, LENGTH) / peak
            results[name] = r
            print(f"{name}: {STEPS} steps x {BATCH} triplets x {LENGTH} tokens on {gpu}: {r['tokens']} tokens in "
                  f"{r['seconds']:.1f} s = {r['tokens_per_s']:.0f} tok/s, MFU {100 * r['mfu']:.1f} %, "
                  f"peak GPU memory {r['peak_gib']:.1f} GiB, final loss {r['final_loss']:.4f}", flush=True)
    o, b = results["ours"], results["baseline"]
    print(json.dumps({"metric": "train_tokens_per_second_gpu", "ours": round(o["tokens_per_s"], 1),
                      "baseline": round(b["tokens_per_s"], 1), "ratio": round(o["tokens_per_s"] / b["tokens_per_s"], 3),
                      "mfu": {"ours": round(o["mfu"], 4), "baseline": round(b["mfu"], 4)},
                      "peak_gpu_memory_gib": {"ours": round(o["peak_gib"], 2), "baseline": round(b["peak_gib"], 2)},
                      "gpu": gpu, "model": "Qwen2-0.5B architecture, random weights", "batch": BATCH,
                      "length": LENGTH, "steps": STEPS}))


if __name__ == "__main__":
    main()
