"""The PatchGAN discriminator of pix2pix, laid out like the original so that CompVis ``loss.discriminator.*`` loads."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class ActNorm(nn.Module):
    """Per-channel affine normalization whose offset and scale are set from the first training batch.

    The first forward in training mode sets ``loc = -mean`` and ``scale = 1 / (std + 1e-6)`` per channel, so that
    batch's outputs are standardized, then marks the ``initialized`` buffer; after that the two are ordinary learned
    parameters. The names (``loc``, ``scale``, ``initialized``) and shapes are the original's. Under
    ``torch.distributed`` every rank takes rank 0's statistics, so the replicas stay identical.
    """

    def __init__(self, num_features: int):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, num_features, 1, 1))
        self.scale = nn.Parameter(torch.ones(1, num_features, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))
        # Reading the buffer costs a device sync, so once it is seen set we remember that in Python.
        self._known_initialized = False
        self.register_load_state_dict_post_hook(ActNorm._forget_initialized)

    @staticmethod
    def _forget_initialized(module: ActNorm, incompatible_keys) -> None:
        module._known_initialized = False

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        flat = x.transpose(0, 1).reshape(x.shape[1], -1)
        self.loc.copy_(-flat.mean(1).view_as(self.loc))
        self.scale.copy_(1.0 / (flat.std(1).view_as(self.scale) + 1e-6))
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(self.loc, 0)
            dist.broadcast(self.scale, 0)
        self.initialized.fill_(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not self._known_initialized:
            if self.initialized.item() == 0:
                self.initialize(x)
            self._known_initialized = True
        return self.scale * (x + self.loc)


class NLayerDiscriminator(nn.Module):
    """Convolutions that map an image to a grid of real/fake logits, one per overlapping patch.

    ``n_layers`` stride-2 convolutions (the first without normalization) double the width up to ``8 * ndf``, then
    one stride-1 convolution and a 1-channel stride-1 output convolution; kernels are 4×4 with padding 1, so a
    256×256 image gives 30×30 logits with ``n_layers=3``. Normalized convolutions carry a bias only with ActNorm
    (BatchNorm has its own). Parameters are named ``main.<index>.*`` as in the original.
    """

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3, use_actnorm: bool = False):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers: expected at least 1, got {n_layers}")
        norm = ActNorm if use_actnorm else nn.BatchNorm2d
        bias = use_actnorm
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        width = ndf
        for n in range(1, n_layers + 1):
            out = ndf * min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(width, out, 4, stride, 1, bias=bias), norm(out), nn.LeakyReLU(0.2, True)]
            width = out
        layers.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The DCGAN init the original uses: conv weights N(0, 0.02), BatchNorm weights N(1, 0.02) and bias 0.

        Conv biases keep PyTorch's default init and ActNorm its identity, as in the original.
        """
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``B×C×H×W`` images -> ``B×1×h×w`` logits."""
        return self.main(images)
