"""kalm: the domain logic of kalm-pipeline (no Prefect import here).

torchrun and vLLM workers import this package, so it stays free of orchestration
code and imports heavy libraries (torch, transformers, mteb...) lazily, inside the
functions that need them.
"""

__version__ = "0.1.0"
