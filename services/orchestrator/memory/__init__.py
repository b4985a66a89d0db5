"""Semantic memory: text kept per project and found again by meaning (pgvector)."""
