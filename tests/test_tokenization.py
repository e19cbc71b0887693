"""kalm.tokenization: the tokenizers' thread pool turned on for a span, the caller's setting restored."""

from __future__ import annotations

import os

import pytest

from kalm.tokenization import parallel_tokenizers


@pytest.mark.parametrize("before", [None, "false", "true"])
def test_parallel_tokenizers_sets_true_and_restores_the_previous_setting(monkeypatch, before):
    if before is None:
        monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    else:
        monkeypatch.setenv("TOKENIZERS_PARALLELISM", before)
    with parallel_tokenizers():
        assert os.environ["TOKENIZERS_PARALLELISM"] == "true"
    assert os.environ.get("TOKENIZERS_PARALLELISM") == before
    with pytest.raises(KeyError):  # restored whatever the block raises
        with parallel_tokenizers():
            raise KeyError("boom")
    assert os.environ.get("TOKENIZERS_PARALLELISM") == before
