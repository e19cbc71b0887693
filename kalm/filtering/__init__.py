"""Ranking-consistency filtering and hard-negative mining with FAISS (KaLM's second lever)."""
