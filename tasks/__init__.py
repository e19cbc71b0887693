"""Prefect tasks: each wraps one ``kalm`` stage function with retries, a content cache key,
persisted results, progress and a summary artifact."""

from tasks.common import configure_prefect_home

configure_prefect_home()
