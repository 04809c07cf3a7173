"""Codebook statistics from code counts: how much of the vocabulary a VQGAN uses, during training and evaluation."""

from __future__ import annotations

import torch


def codebook_statistics(counts: torch.Tensor) -> dict[str, float]:
    """Usage (share of codes used), perplexity and dead-code count of a vector of code counts.

    Perplexity is ``exp`` of the entropy of the empirical code distribution: the number of equally used codes
    that would give the same entropy (``num_codes`` at best, 1 when a single code is used).
    """
    total = counts.sum()
    probabilities = counts / total.clamp_min(1)
    entropy = -(probabilities * probabilities.clamp_min(1e-12).log()).sum()
    used = int((counts > 0).sum())
    return {"codebook_usage": used / counts.numel(), "perplexity": float(entropy.exp()),
            "dead_codes": counts.numel() - used}


def count_codes(indices: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """How often each code occurs in ``indices`` (any shape), as a float CPU vector of ``vocab_size``."""
    return torch.bincount(indices.flatten().cpu(), minlength=vocab_size).float()
