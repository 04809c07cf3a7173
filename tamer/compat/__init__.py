"""Readers for checkpoints of other code bases (CompVis taming-transformers)."""
