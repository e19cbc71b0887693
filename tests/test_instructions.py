"""The one instruction policy: sides per task type, and prompts under names mteb reads."""

import pytest

from kalm.instructions import InstructionPolicy


def test_sides_follow_task_symmetry():
    both, none = InstructionPolicy(), InstructionPolicy(symmetric="none")
    assert both.sides("retrieval") == none.sides("retrieval") == (True, False)
    assert both.sides("sts") == (True, True) and none.sides("sts") == (False, False)
    assert InstructionPolicy(enabled=False).sides("retrieval") == (False, False)
    assert both.query_text("reranking", "Rank answers", "q") == "Instruct: Rank answers\nQuery: q"
    assert both.document_text("reranking", "Rank answers", "d") == "d"
    assert both.document_text("clustering", "Group topics", "d") == "Instruct: Group topics\nQuery: d"
    with pytest.raises(ValueError, match="unknown task type"):
        both.sides("summarization")
    with pytest.raises(ValueError, match="must contain"):
        InstructionPolicy(format="{query} -- {instruction}")


def test_mteb_prompts_use_names_mteb_validates():
    from mteb.models.abs_encoder import AbsEncoder

    prompts = InstructionPolicy().mteb_prompts({"retrieval": "Find answers", "sts": "Similar text",
                                                 "classification": "Classify intent"})
    assert prompts == {"Retrieval-query": "Instruct: Find answers\nQuery: ", "Retrieval-document": "",
                       "STS": "Instruct: Similar text\nQuery: ", "Classification": "Instruct: Classify intent\nQuery: ",
                       "query": "Instruct: Find answers\nQuery: ", "document": ""}
    assert AbsEncoder.validate_task_to_prompt_name(prompts) == prompts  # raises on a name mteb does not know
    assert "STS" not in InstructionPolicy(symmetric="none").mteb_prompts({"sts": "Similar text"})
    assert InstructionPolicy(enabled=False).mteb_prompts({"retrieval": "x"}) == {}


def test_one_choice_per_symmetric_type():
    """Pair tasks (STS, pair classification) and single-text ones (classification, clustering) can differ:
    sides, mteb prompts and the cache-key text follow each type's choice; a type left out is "both"."""
    from pydantic import ValidationError

    from kalm.training.config import TrainConfig

    policy = InstructionPolicy(symmetric={"sts": "none", "pair_classification": "none"})
    assert policy.sides("sts") == policy.sides("pair_classification") == (False, False)
    assert policy.sides("classification") == policy.sides("clustering") == (True, True)
    assert policy.sides("retrieval") == (True, False)
    prompts = policy.mteb_prompts({"sts": "Similar text", "pair_classification": "Same meaning",
                                   "classification": "Classify intent", "clustering": "Group topics"})
    assert prompts == {"Classification": "Instruct: Classify intent\nQuery: ",
                       "Clustering": "Instruct: Group topics\nQuery: "}
    assert policy.symmetric_key == "classification=both,clustering=both,pair_classification=none,sts=none"
    # One choice for all is the same policy, and the same key, as the plain string.
    assert InstructionPolicy(symmetric={t: "none" for t in ("sts", "clustering", "classification",
                                                             "pair_classification")}).symmetric_key == "none"
    assert InstructionPolicy().symmetric_key == "both"
    with pytest.raises(ValueError, match="not symmetric task types"):
        InstructionPolicy(symmetric={"retrieval": "none"})
    with pytest.raises(ValueError, match="use 'both' or 'none'"):
        InstructionPolicy(symmetric={"sts": "query"})
    cfg = TrainConfig(symmetric_instructions={"sts": "none"})
    assert cfg.instruction_policy().sides("sts") == (False, False)
    with pytest.raises(ValidationError):
        TrainConfig(symmetric_instructions={"retrieval": "none"})


def test_a_per_type_choice_has_one_order_whatever_its_source():
    """The default, a YAML mapping in any order and the manifest's sorted JSON give the same config dump,
    so the exported kalm_training.json (the model's content hash) and cache keys do not change on a rerun
    from the recorded config (case 13: an unchanged `--only train` lost its scores over this)."""
    import json

    from kalm.training.config import TrainConfig

    default = TrainConfig()
    reversed_ = TrainConfig(symmetric_instructions=dict(reversed(list(default.symmetric_instructions.items()))))
    recorded = TrainConfig.model_validate(json.loads(json.dumps(default.model_dump(mode="json"), sort_keys=True)))
    assert default.model_dump_json() == reversed_.model_dump_json() == recorded.model_dump_json()
    assert list(default.symmetric_instructions) == ["pair_classification", "sts"]
    assert TrainConfig(symmetric_instructions="none").symmetric_instructions == "none"
