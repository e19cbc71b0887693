"""Ingest streams real open datasets (../shared/data) into sharded example Parquet."""

import json

import pyarrow.parquet as pq
import pytest

from kalm.ingest.config import DatasetSource, IngestConfig
from kalm.ingest.readers import IngestError
from kalm.ingest.stage import run_ingest
from kalm.schema import iter_examples, read_examples
from kalm.text import fold

OFF = {"decontamination": {"enabled": False}, "dedup": {"enabled": False}}


def test_sts_and_classification_from_shared_data(shared_data, tmp_path):
    cfg = IngestConfig(datasets=[
        DatasetSource(name="stsb", path=shared_data / "stsb_en" / "train.jsonl", format="sts", min_score=4.0,
                      in_domain=True),
        DatasetSource(name="banking77", path=shared_data / "banking77", split="train", format="classification",
                      max_rows=300, instruction="Classify the intent"),
    ], **OFF)
    result = run_ingest(cfg, tmp_path)
    examples = list(iter_examples(read_examples(result.parquet_files())))
    sts = [e for e in examples if e.source == "stsb"]
    rows = [json.loads(line) for line in (shared_data / "stsb_en" / "train.jsonl").read_text().splitlines()]
    expected = {(r["sentence1"].strip(), r["sentence2"].strip()) for r in rows
                if float(r["score"]) >= 4.0 and fold(r["sentence1"]) != fold(r["sentence2"])}
    assert {(e.query, e.positive) for e in sts} == expected
    s = result.info["per_source"]["stsb"]
    assert s["rows_read"] == len(rows) and s["skipped"]["below_min_score"] == sum(float(r["score"]) < 4 for r in rows)
    assert s["dropped"] == {"query_equals_positive": sum(float(r["score"]) >= 4 and fold(r["sentence1"]) ==
                                                         fold(r["sentence2"]) for r in rows)}
    cls = [e for e in examples if e.source == "banking77"]
    assert len(cls) == 300 and result.counts["examples"] == len(sts) + 300
    labels = {json.loads(line)["text"].strip(): json.loads(line)["label"]
              for line in (shared_data / "banking77" / "train.jsonl").read_text().splitlines()}
    for e in cls:
        assert labels[e.positive] == e.metadata["label"] and labels[e.negatives[0]] != e.metadata["label"]
        assert e.query != e.positive and e.instruction == "Classify the intent"
        assert e.metadata["group"] and e.metadata["row"] >= 1
    assert result.info["in_domain_sources"] == ["stsb"]


def test_rerun_is_identical(shared_data, tmp_path):
    cfg = IngestConfig(datasets=[DatasetSource(name="b", path=shared_data / "banking77" / "train.jsonl",
                                               format="classification", max_rows=50, seed=3)])
    a = run_ingest(cfg, tmp_path / "a")
    b = run_ingest(cfg, tmp_path / "b")
    assert a.hashes == b.hashes


def test_max_rows_sample_is_seeded_and_independent_of_batch_size(shared_data, tmp_path):
    path = shared_data / "stsb_en" / "train.jsonl"
    ids = []
    for batch, seed in ((7, 0), (4096, 0), (4096, 1)):
        cfg = IngestConfig(datasets=[DatasetSource(name="s", path=path, format="sts", min_score=3, max_rows=100,
                                                   seed=seed)], batch_size=batch, **OFF)
        r = run_ingest(cfg, tmp_path / f"{batch}-{seed}")
        ids.append(read_examples(r.parquet_files()).column("id").to_pylist())
        assert r.info["per_source"]["s"]["sampled_out"] > 0
    assert len(ids[0]) == 100 and ids[0] == ids[1] and ids[0] != ids[2]


def test_missing_column_is_named(tmp_path):
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    cfg = IngestConfig(datasets=[DatasetSource(name="qa", path=f, format="pairs")])
    with pytest.raises(IngestError, match=r"dataset 'qa'.*no column 'query' for field 'query'.*"
                                          r"Fix: map it with fields: \{query: <column>\}"):
        run_ingest(cfg, tmp_path / "out")
    cfg = IngestConfig(datasets=[DatasetSource(name="qa", path=f, format="pairs",
                                               fields={"query": "question", "positive": "answer"})])
    assert run_ingest(cfg, tmp_path / "out2").counts["examples"] == 1


def _write_pairs(path, n, start=0):
    with open(path, "w") as f:
        for i in range(start, start + n):
            f.write(json.dumps({"query": f"question number {i} about topic {i * 7 % 13}",
                                "positive": f"answer {i}: the reply to question {i} says {i * 3} things"}) + "\n")


def test_file_larger_than_a_shard_writes_several_shards_equal_to_one_shot_read(tmp_path):
    f = tmp_path / "pairs.jsonl"
    _write_pairs(f, 1000)
    src = DatasetSource(name="p", path=f, format="pairs")
    many = run_ingest(IngestConfig(datasets=[src], rows_per_shard=300, batch_size=128), tmp_path / "many")
    one = run_ingest(IngestConfig(datasets=[src], rows_per_shard=10_000), tmp_path / "one")
    shards = many.parquet_files()
    assert [p.name for p in shards] == [f"part-0000{i}.parquet" for i in range(4)]
    assert [pq.ParquetFile(p).metadata.num_rows for p in shards] == [300, 300, 300, 100]
    assert all(p.parent == tmp_path / "many" / "p.parquet" for p in shards)
    assert pq.read_table(tmp_path / "many" / "p.parquet").equals(pq.read_table(one.parquet_files()[0]))
    assert json.loads((tmp_path / "many" / "stats.json").read_text())["datasets"]["p"]["examples"] == 1000


def test_a_shard_folder_as_input_with_a_shard_deleted_is_an_error_naming_it(tmp_path):
    """Another run's shard folder as a dataset path (`path: runs/<id>/ingest/p.parquet`): with one of its
    shards deleted, ingest names the shard instead of reading a dataset silently one shard shorter (the
    folder's .parts.json lists what it holds; pyarrow and `datasets` skip that hidden file)."""
    f = tmp_path / "pairs.jsonl"
    _write_pairs(f, 1000)
    first = run_ingest(IngestConfig(datasets=[DatasetSource(name="p", path=f, format="pairs")], rows_per_shard=300),
                       tmp_path / "first")
    folder = first.parquet_files()[0].parent
    again = IngestConfig(datasets=[DatasetSource(name="again", path=folder)], rows_per_shard=300)
    assert run_ingest(again, tmp_path / "whole").counts["examples"] == 1000  # the folder is a dataset
    (folder / "part-00003.parquet").unlink()  # the last shard: no gap in the numbering shows it
    with pytest.raises(IngestError, match=r"dataset 'again': .*p\.parquet: 1 of its shards are missing "
                                          r"\(part-00003\.parquet; deleted\?\)"):
        run_ingest(again, tmp_path / "short")


def test_hub_style_datasets_are_streamed(tmp_path):
    """A local folder loaded by datasets.load_dataset(..., streaming=True) stands in for the hub, and a
    folder saved with save_to_disk is read memory-mapped; both in Arrow batches."""
    import datasets

    hub = tmp_path / "hub-dataset"
    hub.mkdir()
    _write_pairs(hub / "train.jsonl", 250)
    saved = tmp_path / "saved"
    datasets.load_dataset("json", data_files=str(hub / "train.jsonl"), split="train").save_to_disk(str(saved))
    local = run_ingest(IngestConfig(datasets=[DatasetSource(name="p", path=hub / "train.jsonl")], **OFF),
                       tmp_path / "local")
    for name, src in {"hub": DatasetSource(name="p", hf_name=str(hub), split="train", format="auto"),
                      "saved": DatasetSource(name="p", path=saved, split="train")}.items():
        r = run_ingest(IngestConfig(datasets=[src], batch_size=64, **OFF), tmp_path / name)
        s = r.info["per_source"]["p"]
        assert s["rows_read"] == 250 and s["examples"] == 250 and s["format"] == "pairs", s
        assert s["format_reason"].startswith("auto: columns query + positive")
        a, b = read_examples(r.parquet_files()), read_examples(local.parquet_files())
        assert a.column("query").to_pylist() == b.column("query").to_pylist()
        assert s["files"] == ([f"hub:{hub}/train"] if name == "hub" else [f"{saved} (train)"])


def test_optional_split_that_is_absent_is_skipped_and_reported(shared_data, tmp_path):
    """SciFact's local folder has only its test split: the train split is skipped (task stays zero-shot)."""
    cfg = IngestConfig(datasets=[
        DatasetSource(name="scifact-train", path=shared_data / "scifact", split="train", format="beir",
                      in_domain=True, required=False),
        DatasetSource(name="stsb", path=shared_data / "stsb_en" / "train.jsonl", format="sts", max_rows=20)], **OFF)
    r = run_ingest(cfg, tmp_path)
    assert "qrels/train.tsv" in r.info["skipped_datasets"]["scifact-train"]
    assert "scifact-train" not in r.info["per_source"] and r.info["in_domain_sources"] == []
    with pytest.raises(IngestError, match=r"dataset 'x'.*no qrels/train.tsv.*required: false"):
        run_ingest(IngestConfig(datasets=[DatasetSource(name="x", path=shared_data / "scifact", format="beir")]),
                   tmp_path / "req")


def test_chinese_near_duplicate_pair_is_removed_across_datasets(shared_data, tmp_path):
    """Real LCQMC pairs; a second dataset repeats one with a character changed in query and positive."""
    lines = (shared_data / "lcqmc" / "test.jsonl").read_text().splitlines()[:2000]
    (tmp_path / "lcqmc.jsonl").write_text("\n".join(lines) + "\n")
    rows = [r for r in map(json.loads, lines[:300]) if r["score"] >= 1]
    src = next(r for r in rows if len(r["sentence1"]) >= 8 and len(r["sentence2"]) >= 8)
    twin = {"sentence1": src["sentence1"][:-1] + "呢", "sentence2": src["sentence2"] + "啊", "score": 1}
    (tmp_path / "twin.jsonl").write_text(json.dumps(twin, ensure_ascii=False) + "\n" +
                                         json.dumps(rows[-1], ensure_ascii=False) + "\n")
    cfg = IngestConfig(datasets=[
        DatasetSource(name="lcqmc", path=tmp_path / "lcqmc.jsonl", format="sts", min_score=1, language="zh"),
        DatasetSource(name="twin", path=tmp_path / "twin.jsonl", format="sts", min_score=1, language="zh")],
        decontamination={"enabled": False})
    r = run_ingest(cfg, tmp_path / "out")
    s = r.info["per_source"]["twin"]
    assert s["deduplicated"] == {"exact_duplicate": 1, "near_duplicate": 1} and s["examples"] == 0
    assert s["first_rows"]["deduplicated:near_duplicate"] == [f"{tmp_path / 'twin.jsonl'} line 1"]


def test_swap_positives_plants_a_known_share_of_wrong_pairs(shared_data, tmp_path):
    """The levers experiment's knob: a stated share of STS-B pairs get another pair's positive, marked."""
    import json

    import pyarrow.parquet as pq

    from kalm.ingest.config import DatasetSource, IngestConfig
    from kalm.ingest.stage import run_ingest

    def ingest(share):
        src = DatasetSource(name="stsb", path=shared_data / "stsb_en" / "train.jsonl", format="sts", min_score=4.0,
                            swap_positives=share, seed=3)
        result = run_ingest(IngestConfig(datasets=[src], dedup={"enabled": False}), tmp_path / f"s{share}")
        return result, pq.read_table(tmp_path / f"s{share}" / "stsb.parquet").to_pylist()

    clean, rows = ingest(0.0)
    noisy, swapped = ingest(0.25)
    assert clean.info["per_source"]["stsb"]["planted_wrong"] == 0
    planted = [r for r in swapped if json.loads(r["metadata"]).get("planted") == "swapped_positive"]
    n = noisy.info["per_source"]["stsb"]["planted_wrong"]
    assert n == len(planted) and abs(n - 0.25 * len(rows)) <= 2
    assert [r["query"] for r in swapped] == [r["query"] for r in rows]  # same examples, same order
    changed = [i for i, (a, b) in enumerate(zip(rows, swapped)) if a["positive"] != b["positive"]]
    assert changed == [i for i, r in enumerate(swapped) if json.loads(r["metadata"]).get("planted")]
    assert [r["positive"] for r in ingest(0.25)[1]] == [r["positive"] for r in swapped]  # seeded
