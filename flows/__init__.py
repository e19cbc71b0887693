"""Prefect flows: the retrain recipe, one flow per stage, ablations."""

from tasks.common import configure_prefect_home

configure_prefect_home()
