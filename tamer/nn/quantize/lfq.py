"""Lookup-free quantization (MAGVIT-v2, https://arxiv.org/abs/2310.05737) and its spherical form, binary spherical
quantization (BSQ, https://arxiv.org/abs/2406.07548): each latent channel becomes one bit, its sign.

An entropy loss keeps every code in use: each latent's soft assignment over all ``2^D`` codes should be confident
(low per-sample entropy) while the batch's average assignment should be spread out (high codebook entropy). Under
DDP the average assignment is taken over every rank's batch, with its gradient, so the loss is the one a single
process would compute on the whole batch.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F

from tamer.nn.quantize.base import Quantized, Quantizer, QuantizerConfig, straight_through


def entropy(probs: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Entropy (nats) of distributions along the last axis; ``eps`` bounds the log where a probability is ~0."""
    return -(probs * probs.clamp_min(eps).log()).sum(-1)


def mean_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The mean over DDP ranks, differentiable (each rank's gradient reaches every rank's input)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return dist_fn.all_reduce(tensor) / dist.get_world_size()


class LookupFreeQuantizer(Quantizer):
    """``z -> sign(z)`` per channel (``±1``; ``±1/√D`` on the unit sphere for BSQ), straight-through.

    Loss: ``entropy_weight · (H(p) - diversity_gamma · H(mean p)) + beta · ||z - sg(q)||²`` with
    ``p = softmax(2 z·c / entropy_temperature)`` over all codes ``c``. Bit ``i`` of an index is channel ``i``'s sign,
    the first channel the most significant bit.
    """

    def __init__(self, config: QuantizerConfig):
        super().__init__(config)
        bits = config.embed_dim
        self.register_buffer("bit_values", 2 ** torch.arange(bits - 1, -1, -1), persistent=False)
        self.scale = 1.0 / math.sqrt(bits) if config.spherical else 1.0

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        bits = (indices.unsqueeze(-1) & self.bit_values) != 0
        return torch.where(bits, self.scale, -self.scale)

    def codebook(self) -> torch.Tensor:
        """All ``2^D`` codes, ``n×D``, in index order."""
        return self.lookup(torch.arange(self.config.num_codes, device=self.bit_values.device))

    def quantize(self, z: torch.Tensor) -> Quantized:
        z = z.permute(0, 2, 3, 1)  # B×h×w×D
        if self.config.spherical:
            z = F.normalize(z, dim=-1)
        positive = z > 0
        z_q = torch.where(positive, self.scale, -self.scale)
        indices = (positive.long() * self.bit_values).sum(-1)
        loss = self.config.beta * F.mse_loss(z, z_q)
        if self.training:
            loss = loss + self.config.entropy_weight * self.entropy_loss(z.reshape(-1, z.shape[-1]))
        z_q = straight_through(z, z_q)
        return Quantized(z_q.permute(0, 3, 1, 2).contiguous(), loss, indices)

    def entropy_loss(self, flat: torch.Tensor) -> torch.Tensor:
        """Per-sample entropy minus ``diversity_gamma`` × the entropy of the mean assignment, over ``flat`` (N×D)."""
        logits = 2 * flat @ self.codebook().t() / self.config.entropy_temperature
        probs = logits.softmax(-1)
        per_sample = entropy(probs).mean()
        codebook = entropy(mean_over_ranks(probs.mean(0)))
        return per_sample - self.config.diversity_gamma * codebook
