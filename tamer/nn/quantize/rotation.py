"""The rotation trick (Fifty et al. 2024, https://arxiv.org/abs/2410.06424), a gradient through VQ that keeps the
angle between a latent and its code instead of copying the code's gradient onto the latent."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rotate_to(z: torch.Tensor, z_q: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The value of ``z_q`` (``N×D``) as ``λ·R·z``, with the rotation ``R`` that takes ``z``'s direction onto
    ``z_q``'s and the scale ``λ = |z_q| / |z|`` held constant, so the gradient reaches ``z`` through ``R``.

    ``R = I - 2 w wᵀ + 2 v uᵀ`` with ``u = z/|z|``, ``v = z_q/|z_q|`` and ``w = (u + v)/|u + v|`` (the paper's
    eq. 4.2), applied without forming the ``D×D`` matrix.
    """
    u = F.normalize(z, dim=-1, eps=eps).detach()
    v = F.normalize(z_q, dim=-1, eps=eps).detach()
    w = F.normalize(u + v, dim=-1).detach()
    rotated = z - 2 * (z * w).sum(-1, keepdim=True) * w + 2 * (z * u).sum(-1, keepdim=True) * v
    scale = z_q.norm(dim=-1, keepdim=True) / z.norm(dim=-1, keepdim=True).clamp_min(eps)
    return rotated * scale.detach()
