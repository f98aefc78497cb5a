"""Sentence embeddings (all-MiniLM-L6-v2, 384 dimensions), loaded offline once per process."""

DIMENSION = 384
