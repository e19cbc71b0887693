"""GPU rehearsal of configs/kalm-mini.yaml's ``train:`` section on one real GPU (no download).

What CI runs on CPU twins (tests/test_train_rehearsal.py: 2 gloo processes, a hidden-64 Qwen2),
run here on CUDA with NCCL and the real student architecture: a random-weight Qwen2-0.5B
(``bench/train_gpu.py``'s ``build_student``), kalm-mini's settings (bf16 mixed precision, SDPA,
gradient checkpointing, GradCache chunk 64, Matryoshka dims [896 .. 64], semi-homogeneous
sampler, 7 hard negatives, temperature 0.01) with only the batch (64, not 512), steps (12, not
6000) and text length (128 tokens) shrunk, one process through the real torchrun launch.

For each strategy (DDP, then FSDP2): train, SIGKILL the whole process tree once step 6 is logged,
resume from the last checkpoint, finish, export; then check that the export's sentence-transformers
embeddings equal the trainer's own (from the last DCP checkpoint) on the GPU. Prints per strategy:
seconds, tokens/s, final loss, whether it resumed, the export cosine; last line a JSON summary.

    python bench/gpu_rehearsal.py      # ~3-5 min on one H200
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

BATCH, STEPS, KILL_AFTER, LENGTH = 64, 12, 6, 128
SENTENCES = ["A man is playing a guitar.", "Stocks fell sharply on Monday.", "How do I reset my password?"]


def examples(folder: Path, n: int) -> Path:
    """``n`` random-word (query, positive, 7 negatives) rows over two task types, as one shard folder."""
    from train_gpu import make_triplets

    from kalm.schema import Example, ShardWriter

    rows = make_triplets(n * 3, LENGTH)
    ex = []
    for i in range(n):
        q, p, _ = rows[i]
        negs = [rows[(i * 7 + j) % len(rows)][2] for j in range(1, 8)]
        task, instruction = (("retrieval", "Given a query, retrieve relevant passages.") if i % 2 else
                             ("sts", "Retrieve semantically similar text."))
        ex.append(Example(task_type=task, query=q, positive=p, negatives=negs, source="bench", instruction=instruction))
    with ShardWriter(folder, rows_per_shard=500) as w:
        w.write(ex)
    return folder


def rehearse(strategy: str, student: Path, data: Path, work: Path, backend: str = "nccl", **more) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer
    from train_twins import logged_past, metrics, run_key_dir, run_torchrun

    from kalm.config import load_config
    from kalm.training.checkpoint import load_model_weights
    from kalm.training.data import prepare_training_data
    from kalm.training.model import Embedder, load_tokenizer

    sets = {"train.student": str(student), "train.batch_size": BATCH, "train.max_steps": STEPS,
            "train.checkpoint_every": KILL_AFTER, "train.max_length": LENGTH + 16,
            "train.distributed.nproc_per_node": 1, "train.distributed.backend": backend,
            "train.distributed.strategy": strategy, **more}
    cfg = load_config(ROOT / "configs" / "kalm-mini.yaml", sets, check_paths=False).train
    out = work / strategy
    tokens = prepare_training_data(cfg, [data], out / "tokens", model_path=str(student))
    t0 = time.perf_counter()
    killed = run_torchrun(cfg, str(student), tokens, out, kill_when=logged_past(out, KILL_AFTER), timeout=600)
    rc = run_torchrun(cfg, str(student), tokens, out, timeout=600)
    seconds = time.perf_counter() - t0
    if rc != 0:
        log = (work / f"{strategy}.log").read_text()[-4000:]
        raise SystemExit(f"{strategy}: torchrun exited {rc}\n{log}")
    steps = metrics(run_key_dir(out))
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    emb = Embedder(str(student), cfg.model_copy(update={"dtype": "float32"}), dev).to(dev).eval()
    load_model_weights(run_key_dir(out) / f"step-{STEPS:07d}", emb)
    tok = load_tokenizer(str(student), cfg.pooling)
    enc = tok(SENTENCES, padding=True, truncation=True, max_length=cfg.max_length, return_tensors="pt").to(dev)
    with torch.no_grad():
        ours = emb(enc["input_ids"], enc["attention_mask"]).float()
    st = SentenceTransformer(str(out / "model"), device=dev.type)
    theirs = torch.tensor(st.encode(SENTENCES, normalize_embeddings=True), device=dev)
    cos = torch.nn.functional.cosine_similarity(ours, theirs).min().item()
    row = {"strategy": strategy, "killed_then_resumed": killed == -9, "steps_logged": sorted(steps)[-1],
           "seconds_both_launches": round(seconds, 1), "final_loss": round(steps[max(steps)]["loss"], 4),
           "tokens_per_s_last_step": steps[max(steps)]["tokens_per_s"],
           "export_cosine_min": round(cos, 6)}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu_rehearsal.py needs a CUDA GPU; on CPU, tests/test_train_rehearsal.py runs the twins")
    from train_gpu import build_student

    with tempfile.TemporaryDirectory() as t:
        work = Path(t)
        student = build_student(work / "qwen2-0.5b-random", max_position_embeddings=4096)
        data = examples(work / "kept", BATCH * STEPS * 2)
        rows = [rehearse(s, student, data, work) for s in ("ddp", "fsdp")]
    print(json.dumps({"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "rehearsals": rows}))


if __name__ == "__main__":
    main()
