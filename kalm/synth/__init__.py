"""Persona-based synthetic data generation (KaLM's first lever)."""
