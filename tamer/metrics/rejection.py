"""Classifier rejection sampling, as the paper reports class-conditional ImageNet results with it.

For class-conditional ImageNet, Taming Transformers scores each sample with a pretrained classifier (a ResNet)
and keeps the best ones; the acceptance rate (the fraction kept) must be reported beside any metric computed on
what was kept, since it trades diversity for fidelity. :func:`classifier_scores` gives the scores,
:func:`reject` keeps the top fraction, and the sampling code can call both on each batch it draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Rejection:
    """What :func:`reject` kept: indices into the candidates (best first), their scores and the acceptance rate."""

    kept: torch.Tensor  # LongTensor of indices, highest score first
    scores: torch.Tensor  # the kept candidates' scores, in the same order
    threshold: float  # the lowest score kept
    acceptance_rate: float  # len(kept) / number of candidates: report it with the metric
    candidates: int

    def select(self, samples: torch.Tensor) -> torch.Tensor:
        """The kept samples out of the candidate batch ``samples``."""
        return samples[self.kept.to(samples.device)]


def reject(scores: torch.Tensor, acceptance_rate: float) -> Rejection:
    """Keep the ``ceil(acceptance_rate × N)`` candidates with the highest scores (at least one).

    Ties at the threshold are broken by candidate order (a stable sort), so the result is deterministic.
    """
    if not 0 < acceptance_rate <= 1:
        raise ValueError(f"acceptance_rate: expected a fraction in (0, 1], got {acceptance_rate}")
    scores = scores.detach().flatten().float()
    if scores.numel() == 0:
        raise ValueError("reject: no candidates")
    count = max(1, math.ceil(acceptance_rate * scores.numel() - 1e-9))
    order = torch.sort(scores, descending=True, stable=True).indices[:count]
    kept_scores = scores[order]
    return Rejection(order, kept_scores, float(kept_scores[-1]), count / scores.numel(), scores.numel())


@torch.inference_mode()
def classifier_scores(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None,
                      batch_size: int = 64) -> torch.Tensor:
    """The classifier's probability of each image's class (``labels``), or of its top class when ``labels`` is None.

    ``classifier`` maps images as given (tamer's ``B×C×H×W`` in [-1, 1], on the classifier's device) to logits
    ``B×K``; its preprocessing is its own business.
    """
    device = next(classifier.parameters()).device
    scores = []
    for start in range(0, len(images), batch_size):
        logits = classifier(images[start:start + batch_size].to(device)).float()
        probabilities = logits.softmax(dim=-1)
        if labels is None:
            scores.append(probabilities.amax(dim=-1).cpu())
        else:
            batch_labels = labels[start:start + batch_size].to(device).long()
            scores.append(probabilities.gather(1, batch_labels[:, None])[:, 0].cpu())
    return torch.cat(scores)
