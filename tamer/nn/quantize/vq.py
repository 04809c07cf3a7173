"""Nearest-neighbour codebook quantization: the VQ of VQ-VAE and VQGAN, with EMA codebooks, k-means start,
dead-code restarts, l2-normalised codes and the rotation trick as options."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from tamer.nn.quantize.base import Quantized, Quantizer, QuantizerConfig, straight_through
from tamer.nn.quantize.rotation import rotate_to


class VectorQuantizer(Quantizer):
    """Nearest-neighbour vector quantizer (VQ-VAE https://arxiv.org/abs/1711.00937, VQGAN
    https://arxiv.org/abs/2012.09841) with a straight-through gradient, or the rotation trick.

    Loss (default): ``||sg(z) - e||² + beta·||z - sg(e)||²``; with ``legacy_loss`` the two weights are swapped as in
    the original code. With ``ema`` the codebook follows moving averages of its assigned latents and only the
    commitment term is returned.
    """

    def __init__(self, config: QuantizerConfig):
        super().__init__(config)
        n, d = config.num_codes, config.embed_dim
        self.init_codebook(n, d)
        if config.ema:
            self.embedding.weight.requires_grad_(False)
            self.register_buffer("ema_cluster_size", torch.zeros(n))
            self.register_buffer("ema_embed_sum", torch.zeros(n, d))
        if config.dead_code_threshold > 0:
            self.register_buffer("steps_unused", torch.zeros(n, dtype=torch.long))
        if config.kmeans_init:
            self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def init_codebook(self, n: int, d: int) -> None:
        self.embedding = nn.Embedding(n, d)
        nn.init.uniform_(self.embedding.weight, -1.0 / n, 1.0 / n)

    def codebook(self) -> torch.Tensor:
        weight = self.embedding.weight
        return F.normalize(weight, dim=1) if self.config.l2_normalize else weight

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each row of ``flat`` (N×D)."""
        codebook = self.codebook()
        if self.config.l2_normalize:
            return (flat @ codebook.t()).argmax(dim=1)
        # ||z||² + ||e||² - 2 z·e, in the same order as the original, so that ties break the same way.
        distances = flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2 * flat @ codebook.t()
        return distances.argmin(dim=1)

    def quantize(self, z: torch.Tensor) -> Quantized:
        b, d, h, w = z.shape
        z = z.permute(0, 2, 3, 1)
        if self.config.l2_normalize:
            z = F.normalize(z, dim=-1)
        flat = z.reshape(-1, d)
        indices, z_q, loss = self.assign(flat)
        z_q = self.pass_gradient(flat, z_q).view(b, h, w, d)
        indices = self._public(indices.view(b, h, w))
        return Quantized(z_q.permute(0, 3, 1, 2).contiguous(), loss, indices)

    def assign(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Latents ``N×D`` -> (codebook indices ``N``, their codes ``N×D``, codebook + commitment loss); in training
        also the k-means start, EMA step and dead-code restarts."""
        if self.config.kmeans_init and self.training and not self.initialized:
            self._kmeans_init(flat.detach())
        with torch.no_grad():
            indices = self.nearest(flat)
        if self.training and (self.config.ema or self.config.dead_code_threshold > 0):
            self._update_codebook(flat.detach(), indices)
        z_q = F.embedding(indices, self.codebook())

        commitment = F.mse_loss(flat, z_q.detach())
        if self.config.ema:
            loss = self.config.beta * commitment
        else:
            codebook_term = F.mse_loss(z_q, flat.detach())
            if self.config.legacy_loss:
                loss = commitment + self.config.beta * codebook_term
            else:
                loss = codebook_term + self.config.beta * commitment
        return indices, z_q, loss

    def pass_gradient(self, flat: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
        """The codes' values with a gradient to the latents: the rotation trick or straight-through."""
        return rotate_to(flat, z_q) if self.config.rotation_trick else straight_through(flat, z_q)

    @torch.no_grad()
    def _update_codebook(self, flat: torch.Tensor, indices: torch.Tensor) -> None:
        """EMA step and dead-code restarts; statistics are summed over DDP ranks so every rank keeps one codebook."""
        n = self.config.num_codes
        counts = torch.bincount(indices, minlength=n).to(flat.dtype)
        distributed = dist.is_available() and dist.is_initialized()
        if self.config.ema:
            sums = torch.zeros(n, flat.shape[1], dtype=flat.dtype, device=flat.device).index_add_(0, indices, flat)
            if distributed:
                dist.all_reduce(sums)
        if distributed:
            dist.all_reduce(counts)
        if self.config.ema:
            decay, eps = self.config.ema_decay, self.config.ema_eps
            self.ema_cluster_size.lerp_(counts, 1 - decay)
            self.ema_embed_sum.lerp_(sums, 1 - decay)
            # Laplace smoothing keeps rarely used codes from dividing by zero; codes never used keep their vector.
            total = self.ema_cluster_size.sum()
            size = (self.ema_cluster_size + eps) / (total + n * eps) * total
            seen = self.ema_cluster_size > eps
            self.embedding.weight[seen] = self.ema_embed_sum[seen] / size[seen].unsqueeze(1)
        if self.config.dead_code_threshold > 0:
            self.steps_unused.add_(1).masked_fill_(counts > 0, 0)
            dead = self.steps_unused >= self.config.dead_code_threshold
            if dead.any():
                self._restart(dead, flat, distributed)

    @torch.no_grad()
    def _kmeans_init(self, flat: torch.Tensor) -> None:
        """Lloyd's k-means on this batch's latents (rank 0's, broadcast) as the starting codebook."""
        n = self.config.num_codes
        centres = flat[torch.randint(0, flat.shape[0], (n,), device=flat.device)].clone()
        for _ in range(self.config.kmeans_iters):
            if self.config.l2_normalize:
                centres = F.normalize(centres, dim=1)
                assignment = (flat @ centres.t()).argmax(1)
            else:
                assignment = torch.cdist(flat, centres).argmin(1)
            counts = torch.bincount(assignment, minlength=n).to(flat.dtype)
            sums = torch.zeros_like(centres).index_add_(0, assignment, flat)
            used = counts > 0  # an empty cluster keeps its centre
            centres[used] = sums[used] / counts[used].unsqueeze(1)
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(centres, src=0)
        self.embedding.weight.copy_(centres)
        if self.config.ema:
            self.ema_embed_sum.copy_(centres)
            self.ema_cluster_size.fill_(1.0)
        self.initialized.fill_(True)

    def _restart(self, dead: torch.Tensor, flat: torch.Tensor, distributed: bool) -> None:
        """Move dead codes onto latents of the current batch (rank 0's choice, broadcast to all ranks)."""
        picks = flat[torch.randint(0, flat.shape[0], (int(dead.sum()),), device=flat.device)]
        if distributed:
            dist.broadcast(picks, src=0)
        self.embedding.weight[dead] = picks
        self.steps_unused[dead] = 0
        if self.config.ema:
            self.ema_cluster_size[dead] = 1.0
            self.ema_embed_sum[dead] = picks
