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
