"""MTEB evaluation, reports and the quality gate."""
