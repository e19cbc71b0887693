"""Error types shared by every stage.

A :class:`DataError` is a fault in the inputs (a malformed file, a missing column, a deleted
stage output): running the same step again cannot fix it, so the orchestration layer never
retries it (``tasks.common.retry_unless_data_error``) and shows its message as it is.
"""

from __future__ import annotations


class DataError(ValueError):
    """A fault in the inputs that a retry cannot fix; the message names the file, row, field and fix."""


class MissingInputError(DataError, FileNotFoundError):
    """A file a stage reads is gone (e.g. an earlier stage's output deleted from a run folder)."""
