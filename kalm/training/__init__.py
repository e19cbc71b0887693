"""Contrastive training of an embedder (KaLM's third lever)."""
