"""Ingest open datasets into the example schema."""
