"""The Gumbel-softmax quantizer of the original code (its ``GumbelQuantize``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tamer.nn.quantize.base import Quantized, Quantizer, QuantizerConfig


class GumbelQuantizer(Quantizer):
    """Gumbel-softmax quantizer (https://arxiv.org/abs/1611.01144): a 1×1 projection to code logits, then a (hard)
    relaxed one-hot over the codebook.

    In eval the code is the argmax of the logits (deterministic) unless ``stochastic_eval`` restores the original's
    sampling. The loss is ``kl_weight · KL(q ‖ uniform)``.
    """

    def __init__(self, config: QuantizerConfig):
        super().__init__(config)
        self.proj = nn.Conv2d(config.embed_dim, config.num_codes, 1)
        self.embed = nn.Embedding(config.num_codes, config.embed_dim)
        self.temperature = config.temperature

    def codebook(self) -> torch.Tensor:
        return self.embed.weight

    def quantize(self, z: torch.Tensor, temperature: float | None = None) -> Quantized:
        logits = self.proj(z)
        if self.remaps:  # only the used codes compete
            logits = logits.masked_fill(~self._used_mask(logits), float("-inf"))
        if self.training or self.config.stochastic_eval:
            hard = self.config.straight_through if self.training else True
            tau = self.temperature if temperature is None else temperature
            one_hot = F.gumbel_softmax(logits, tau=tau, dim=1, hard=hard)
        else:
            one_hot = F.one_hot(logits.argmax(1), self.config.num_codes).permute(0, 3, 1, 2).to(logits.dtype)
        z_q = torch.einsum("bnhw,nd->bdhw", one_hot, self.embed.weight)
        probs = F.softmax(logits, dim=1)
        kl = torch.sum(probs * torch.log(probs * self.config.num_codes + 1e-10), dim=1).mean()
        indices = self._public(one_hot.argmax(dim=1))
        return Quantized(z_q, self.config.kl_weight * kl, indices, logits)

    def _used_mask(self, logits: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
        mask[self.used] = True
        return mask.view(1, -1, 1, 1)
