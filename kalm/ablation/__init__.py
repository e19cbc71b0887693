"""Ablations: variants of one config, several seeds each, compared with paired intervals."""
