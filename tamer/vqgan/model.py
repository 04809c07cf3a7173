"""The stage-1 model: images -> code indices -> images."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from tamer.checkpoints import Pretrained
from tamer.config import checked_keywords
from tamer.nn.autoencoder import AutoencoderConfig, Decoder, Encoder
from tamer.nn.quantize import Quantized, QuantizerConfig, build_quantizer


@checked_keywords
@dataclass
class VQGANConfig:
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    # Segmentation VQGANs keep a fixed random projection of their label channels to RGB for previews.
    colorize_nlabels: int | None = None

    def __post_init__(self):
        if self.autoencoder.double_z:
            raise ValueError("autoencoder.double_z: a VQGAN quantizes single latents; set double_z to false")

    @property
    def downsample_factor(self) -> int:
        return self.autoencoder.downsample_factor

    @property
    def vocab_size(self) -> int:
        return self.quantizer.vocab_size


@dataclass
class VQGANOutput:
    reconstruction: torch.Tensor  # B×C×H×W
    quantizer_loss: torch.Tensor  # scalar
    indices: torch.Tensor  # B×h×w


class VQGAN(nn.Module, Pretrained):
    """Encoder -> 1×1 conv -> quantizer -> 1×1 conv -> decoder.

    Images are ``B×C×H×W`` floats in [-1, 1] whose sides are multiples of :attr:`downsample_factor`;
    indices are ``B×h×w`` longs.
    """

    model_type = "vqgan"
    config_class = VQGANConfig

    def __init__(self, config: VQGANConfig):
        super().__init__()
        self.config = config
        ae, q = config.autoencoder, config.quantizer
        self.encoder = Encoder(ae)
        self.decoder = Decoder(ae)
        self.quant_conv = nn.Conv2d(ae.z_channels, q.embed_dim, 1)
        self.quantize = build_quantizer(q)
        self.post_quant_conv = nn.Conv2d(q.embed_dim, ae.z_channels, 1)
        if config.colorize_nlabels is not None:
            self.register_buffer("colorize", torch.randn(3, config.colorize_nlabels, 1, 1))

    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def last_layer(self) -> torch.Tensor:
        return self.decoder.last_layer

    def for_inference(self) -> VQGAN:
        """Eval mode with channels-last weights: about 1.2× faster encoding and decoding on the CPU (BENCHMARKS.md).

        Training keeps the default layout, whose backward pass is the faster one here.
        """
        return self.eval().to(memory_format=torch.channels_last)

    def code_shape(self, height: int, width: int) -> tuple[int, int]:
        """The code grid of an image of this size; raises if a side is not a multiple of the factor.

        A residual quantizer's ``depth`` codes per position sit side by side along the width (``h×(w·depth)``).
        """
        f = self.downsample_factor
        if height % f or width % f:
            raise ValueError(f"image size {height}×{width} is not a multiple of the downsampling factor {f}")
        return height // f, width // f * self.config.quantizer.codes_per_position

    def _check_images(self, images: torch.Tensor) -> None:
        channels = self.config.autoencoder.in_channels
        if images.dim() != 4 or images.shape[1] != channels:
            raise ValueError(f"images: expected shape B×{channels}×H×W, got {tuple(images.shape)}")
        self.code_shape(*images.shape[-2:])

    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> continuous latents before quantization, ``B×embed_dim×h×w``."""
        self._check_images(images)
        return self.quant_conv(self.encoder(images))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> code indices ``B×h×w``."""
        return self.quantize(self.encode_latents(images)).indices

    def dequantize(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices ``B×h×w`` -> quantized latents ``B×embed_dim×h×w``."""
        return self.quantize.dequantize(indices)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Quantized latents -> images."""
        return self.decoder(self.post_quant_conv(latents))

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices ``B×h×w`` -> images ``B×C×H×W``."""
        return self.decode_latents(self.dequantize(indices))

    def forward(self, images: torch.Tensor) -> VQGANOutput:
        quantized: Quantized = self.quantize(self.encode_latents(images))
        return VQGANOutput(self.decode_latents(quantized.latents), quantized.loss, quantized.indices)

    def to_rgb(self, x: torch.Tensor) -> torch.Tensor:
        """Segmentation logits or one-hot maps ``B×n_labels×H×W`` -> RGB previews in [-1, 1]."""
        if not hasattr(self, "colorize"):
            raise ValueError("to_rgb: this VQGAN has no colorize buffer (colorize_nlabels is not set)")
        x = F.conv2d(x, self.colorize.to(x))
        low, high = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
        return 2.0 * (x - low) / (high - low).clamp_min(1e-8) - 1.0


def one_hot_labels(labels: torch.Tensor, channels: int) -> torch.Tensor:
    """Label maps ``B×H×W`` (or ``B×1×H×W``) -> float one-hot ``B×channels×H×W`` in {0, 1}, the input of a
    segmentation VQGAN, in training and as a spatial condition (``channels``: its ``autoencoder.in_channels``)."""
    if labels.dim() == 4 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.dim() != 3:
        raise ValueError(f"label map: expected B×H×W integers, got {tuple(labels.shape)}")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= channels:
        raise ValueError(f"label map: labels must lie in 0..{channels - 1} (autoencoder.in_channels), "
                         f"got {low}..{high}")
    return torch.nn.functional.one_hot(labels.long(), channels).permute(0, 3, 1, 2).float()
