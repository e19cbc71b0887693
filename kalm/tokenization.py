"""Tokenizer thread settings shared by the stages that tokenize whole datasets.

The CLI sets ``TOKENIZERS_PARALLELISM=false`` (kalm.cli): a process that forks after Hugging Face
tokenizers used their thread pool gets a warning per child and a pool disabled there. Stages that
tokenize millions of texts and fork nothing meanwhile (training-data preparation, the filter's
static teacher) turn the pool back on for that span: `encode_batch` then uses every core
(model2vec's encode of 100k bench texts on 2 cores: 3.9 s with it, 5.0 s without).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

_ENV = "TOKENIZERS_PARALLELISM"


@contextlib.contextmanager
def parallel_tokenizers() -> Iterator[None]:
    """Sets ``TOKENIZERS_PARALLELISM=true`` inside the block and restores the previous value (or its
    absence) after it, whatever the block raises. The tokenizers library reads the variable at each
    batch call, so the setting takes effect at once."""
    previous = os.environ.get(_ENV)
    os.environ[_ENV] = "true"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(_ENV, None)
        else:
            os.environ[_ENV] = previous
