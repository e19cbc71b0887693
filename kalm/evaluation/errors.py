"""Evaluation's own error types: each message names what is wrong (file, line, setting) and the fix.

``kalm eval`` prints an :class:`EvalError` as one line and exits non-zero; nothing in them is
worth a retry (Prefect retries only what a retry can fix).
"""

from __future__ import annotations


class EvalError(ValueError):
    """Base of the errors below."""


class TaskFolderError(EvalError):
    """A task folder whose kind or format cannot be read; the message names the file, line and fix."""


class EvalTaskError(EvalError):
    """A task argument or config entry that names nothing runnable; the message says how to fix it."""


class EvalModelError(EvalError):
    """A model that cannot be evaluated as asked; the message names the setting and the fix."""
