"""Ingest open datasets into the example schema, streaming.

Modules: ``config`` (datasets, presets, decontamination/dedup settings), ``readers`` (JSON Lines,
Parquet, saved and hub datasets in Arrow batches, with line numbers), ``formats/`` (one mapper per
input format, and ``format: auto``), ``fields`` (vectorised field checks; drops counted by reason),
``examples`` (shared cleaning rules, ids and metadata), ``decontaminate`` (evaluation test texts),
``dedup`` (exact and MinHash-LSH near duplicates across datasets), ``sampling`` (seeded
``max_rows``), ``stage`` (the stage: ``run_ingest``), ``mapping`` (in-memory rows, for small data).
"""
